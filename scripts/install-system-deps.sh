#!/usr/bin/env bash
# Installs what the test suite needs from Debian: the PostgreSQL server binaries, OpenSSH's
# sshd and PgBouncer (the tests start private instances of each on free loopback ports; the
# system services are neither needed nor touched), and Python's venv module.
#
#   scripts/install-system-deps.sh          install what is missing (as root), quiet otherwise
#   scripts/install-system-deps.sh --check  only report what is missing; exit 1 if anything is
set -euo pipefail

check_only=false
if [[ "${1:-}" == "--check" ]]; then
    check_only=true
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--check]" >&2
    exit 2
fi

have_postgres_server() {
    local bindir
    # Debian keeps initdb and postgres in /usr/lib/postgresql/<version>/bin, off PATH.
    for bindir in /usr/lib/postgresql/*/bin; do
        [[ -x "$bindir/initdb" && -x "$bindir/postgres" ]] && return 0
    done
    command -v initdb >/dev/null && command -v postgres >/dev/null
}

have_python_venv() {
    command -v python3 >/dev/null && python3 -c 'import sys, ensurepip, venv
sys.exit(sys.version_info < (3, 10))' 2>/dev/null
}

missing=()
have_postgres_server || missing+=(postgresql)
[[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
# OpenSSH's client: the benchmark's reference, and the SFTP plugin's transport openssh.
command -v ssh >/dev/null && command -v sftp >/dev/null || missing+=(openssh-client)
# The fleet tests put a connection pooler between the engines and PostgreSQL.
[[ -x /usr/sbin/pgbouncer ]] || command -v pgbouncer >/dev/null || missing+=(pgbouncer)
# Debian splits ensurepip out of python3; without it "python3 -m venv" fails.
have_python_venv || missing+=(python3 python3-venv)
# The tests create their system accounts with useradd (package passwd, always installed on
# Debian, but minimal container images sometimes drop it).
command -v useradd >/dev/null || missing+=(passwd)

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if $check_only || [[ $(id -u) -ne 0 ]]; then
    echo "Missing system packages: ${missing[*]}" >&2
    echo "Install them with:  sudo $0   (or: apt-get install ${missing[*]})" >&2
    exit 1
fi

echo "Installing system packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# apt's progress and debconf's notes go to the terminal only when something fails.
if ! output=$(apt-get install -y -qq --no-install-recommends "${missing[@]}" 2>&1); then
    echo "$output" >&2
    exit 1
fi
