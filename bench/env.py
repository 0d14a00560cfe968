"""Servers, per-run directories and configurations for every row, and the machine.

The servers are the test suite's own (``tests/servers``): a private PostgreSQL cluster and an
OpenSSH sshd serving SFTP, each on a free loopback port, started here exactly as the
integration tests start them and stopped when the benchmark ends.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from servers import PostgresEndpoint, SftpDirs  # noqa: E402
from servers.device import DeviceDirs, device_config  # noqa: E402
from servers.pool import ServerPool  # noqa: E402

_names = itertools.count(1)


def _no_fixtures(name: str) -> Any:
    raise RuntimeError("the benchmark runs the servers as local processes only")


@dataclass
class Site(DeviceDirs):
    """One device: its local directories, its database, its remote tree, its configuration."""

    pg: PostgresEndpoint
    sftp: SftpDirs
    overrides: dict[str, Any] = field(default_factory=dict)

    def config(self, **overrides: Any) -> dict[str, Any]:
        # Longer timeouts than the tests': a loaded benchmark machine must not time out.
        return device_config(self.root, self.pg, self.sftp, connect_timeout_seconds=5,
                             statement_timeout_seconds=30, sftp_timeout_seconds=30,
                             **{"log_level": "INFO", **self.overrides, **overrides})

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.sftp.local_dir, ignore_errors=True)


class Bench:
    """The servers of one benchmark run and the scratch space beside them."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.pool = ServerPool("local", _no_fixtures)
        parent = str(workdir) if workdir else None
        if workdir:
            workdir.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="uploader-bench-", dir=parent))
        self.postgres = self.pool.postgres()
        self.sshd = self.pool.sftp()

    def close(self) -> None:
        self.pool.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- per-measurement resources

    def unique(self, tag: str) -> str:
        return f"b{next(_names)}_{tag}"

    def database(self, tag: str) -> PostgresEndpoint:
        return self.postgres.create_database(self.unique(tag))

    def drop_database(self, endpoint: PostgresEndpoint) -> None:
        with contextlib.suppress(Exception):
            self.postgres.drop_database(endpoint.dbname)

    def remote_dirs(self, tag: str) -> SftpDirs:
        return self.sshd.make_dirs(self.unique(tag))

    def site(self, tag: str, pg: PostgresEndpoint | None = None,
             sftp: SftpDirs | None = None, **overrides: Any) -> Site:
        name = self.unique(tag)
        site = Site(self.scratch / name, pg or self.database(tag), sftp or self.remote_dirs(tag),
                    overrides)
        site.make_dirs()
        return site

    def init_db(self, pg: PostgresEndpoint, sftp: SftpDirs) -> None:
        """Create the events table through the uploader itself (``uploader init-db``)."""
        from uploader_core import DataUploader

        site = Site(self.scratch / self.unique("init"), pg, sftp)
        with DataUploader(site.config()) as engine:
            engine.init_storage()
        shutil.rmtree(site.root, ignore_errors=True)

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(self.postgres.admin_conninfo(dbname), autocommit=True)

    def free_bytes(self) -> dict[str, int]:
        """Free space where local packages are written and where the server stores uploads."""
        local = shutil.disk_usage(self.scratch).free
        remote = shutil.disk_usage(self.sshd.endpoint.root).free
        return {"local": local, "remote": remote}


# --- the machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _command(*args: str) -> str:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (result.stdout + result.stderr).strip()


def filesystem_of(path: Path) -> str:
    """The type of the filesystem ``path`` is on (``tmpfs``, ``ext4``...)."""
    best, kind = "", "?"
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


def machine(bench: Bench | None = None) -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    info: dict[str, Any] = {
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "cpu_aes_instructions": bool(flags and "aes" in flags.group(1).split()),
        "memory_bytes": int(mem.group(1)) * 1024 if mem else None,
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "paramiko": _version("paramiko"),
        "cryptography": _version("cryptography"),
        "psycopg": _version("psycopg"),
        "psycopg_binary": _version("psycopg-binary"),
        "pluggy": _version("pluggy"),
        "openssh": _command("ssh", "-V"),
        "libpq": _libpq_version(),
        "openssl_for_paramiko": _openssl_version(),
        "load_average": os.getloadavg(),
        "git_commit": _command("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_command("git", "-C", str(ROOT), "status", "--porcelain",
                                   "--untracked-files=no")),
    }
    if bench is not None:
        with contextlib.suppress(Exception), bench.admin() as conn:
            row = conn.execute("SHOW server_version").fetchone()
            info["postgresql"] = row[0] if row else None
        info["local_filesystem"] = filesystem_of(bench.scratch)
        info["remote_filesystem"] = filesystem_of(bench.sshd.endpoint.root)
    return info


def _os_name() -> str:
    release = _read("/etc/os-release")
    match = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', release, re.M)
    return match.group(1) if match else platform.platform()


def _libpq_version() -> str | None:
    with contextlib.suppress(Exception):
        version = psycopg.pq.version()
        return f"{version // 10000}.{version % 10000}"
    return None


def _openssl_version() -> str | None:
    with contextlib.suppress(Exception):
        from cryptography.hazmat.backends.openssl import backend

        return str(backend.openssl_version_text())
    return None


@contextlib.contextmanager
def scratch_dir(bench: Bench, tag: str) -> Iterator[Path]:
    path = bench.scratch / bench.unique(tag)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
