# Shared by scripts/test and scripts/uploader: system packages (as root), then .venv with the
# project and the given extras. Source it, then call: bootstrap EXTRAS
bootstrap() {
    local extras=$1
    if [[ $(id -u) -eq 0 ]]; then
        scripts/install-system-deps.sh
    elif ! scripts/install-system-deps.sh --check; then
        echo "Some Debian packages are missing; install them as root first." >&2
        return 1
    fi
    if ! .venv/bin/python -c '' 2>/dev/null; then
        local python
        python=$(find_python)
        echo "Creating .venv with $("$python" --version)" >&2
        "$python" -m venv --clear .venv
    fi
    # Reinstall only when the declared dependencies or the extras asked for change; the
    # editable install picks up code changes by itself.
    local stamp=.venv/.installed-$extras
    if ! cmp -s pyproject.toml "$stamp"; then
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
        cp pyproject.toml "$stamp"
    fi
}

find_python() {
    local candidate
    for candidate in python3 python3.13 python3.12 python3.11 python3.10; do
        if command -v "$candidate" >/dev/null &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: Python >= 3.10 not found (install python3 and python3-venv)" >&2
    return 1
}
