"""A throwaway PostgreSQL cluster on a free loopback port, for the demo.

It runs the system's server binaries (Debian keeps them in /usr/lib/postgresql/*/bin) or,
where there are none, those the ``pgserver`` package bundles. ``initdb`` and ``postgres``
refuse to run as root, so as root they run as the ``postgres`` account or, failing that,
as ``nobody``.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from .ports import free_port

USER = "demo"
DBNAME = "postgres"
START_SECONDS = 30.0


class DemoSetupError(RuntimeError):
    """A throwaway server could not be set up; the message says what to install or fix."""


def find_bindir() -> Path:
    """The newest system PostgreSQL binaries, else pgserver's."""
    def version(path: str) -> int:
        name = Path(path).parent.name
        return int(name) if name.isdigit() else 0

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "postgres").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "pginstall" / "bin"
        if (bundled / "initdb").exists():
            return bundled
    raise DemoSetupError("PostgreSQL server binaries not found: install the system's "
                         "PostgreSQL server (Debian: apt-get install postgresql) or "
                         "pip install 'edge-uploader[demo]', which brings pgserver's")


@dataclass(frozen=True)
class Account:
    uid: int
    gid: int

    @classmethod
    def for_server(cls) -> Account:
        if os.geteuid() != 0:
            return cls(os.getuid(), os.getgid())
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                return cls(entry.pw_uid, entry.pw_gid)
        raise DemoSetupError("running as root, and neither a 'postgres' nor a 'nobody' "
                             "account exists to run PostgreSQL as (it refuses root)")

    def popen_kwargs(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


class ThrowawayPostgres:
    """``start()`` makes and starts a cluster in ``directory``; ``stop()`` stops it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.log_path = directory / "server.log"
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self._account = Account.for_server()
        self._bindir = find_bindir()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def settings(self) -> dict[str, Any]:
        """The engine's ``uploader.database`` section for this server."""
        return {"host": "127.0.0.1", "port": self.port, "dbname": DBNAME, "user": USER,
                "password": self.password, "sslmode": "disable",
                "connect_timeout_seconds": 2, "statement_timeout_seconds": 5}

    def start(self) -> None:
        self.directory.mkdir(mode=0o700)
        os.chown(self.directory, self._account.uid, self._account.gid)
        password_file = self.directory / "password"
        password_file.write_text(self.password + "\n")
        os.chown(password_file, self._account.uid, self._account.gid)
        self._run([str(self._bindir / "initdb"), "-D", str(self.data), "-U", USER,
                   f"--pwfile={password_file}", "--auth=scram-sha-256", "-E", "UTF8",
                   "--locale=C", "--no-sync"])
        password_file.unlink()
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [str(self._bindir / "postgres"), "-D", str(self.data),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
                 "-c", f"unix_socket_directories={self.directory}",
                 # A throwaway cluster: durability buys nothing here.
                 "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=20"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.directory, env=_environment(),
                # Its own session: a Ctrl-C in the terminal reaches only the demo, which then
                # stops the engine before the database.
                start_new_session=True, **self._account.popen_kwargs())
        self._wait_ready()

    def _run(self, args: list[str]) -> None:
        result = subprocess.run(args, capture_output=True, text=True, check=False,
                                cwd=self.directory, env=_environment(),
                                **self._account.popen_kwargs())
        if result.returncode != 0:
            raise DemoSetupError(f"{Path(args[0]).name} failed ({result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise DemoSetupError(f"postgres exited with status {self._process.returncode}:"
                                     f"\n{self._log_tail()}")
            try:
                with psycopg.connect(host="127.0.0.1", port=self.port, user=USER,
                                     password=self.password, dbname=DBNAME,
                                     connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise DemoSetupError(f"PostgreSQL did not start within {START_SECONDS:.0f}"
                                         f" s:\n{self._log_tail()}") from None
                time.sleep(0.1)  # polling a server that is starting up

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _environment() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
