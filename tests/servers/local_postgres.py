"""A private PostgreSQL cluster run from the distribution's binaries, on a free loopback port."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from . import pgadmin, system
from .endpoints import PostgresEndpoint
from .process import LocalProcess
from .tls import make_server_certificate

SUPERUSER = "postgres"
# Fleet tests run 20+ engines, each holding a connection, next to the fixtures' own.
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    # Skipping fsync is safe here: kill() ends processes, not the machine, so whatever reached
    # the kernel survives. synchronous_commit must stay on, though: with it off a commit is
    # acknowledged before its WAL leaves the server's memory, and kill() would lose
    # transactions the uploader was told had committed, which no real server does.
    "fsync": "off",
    "synchronous_commit": "on",
    "full_page_writes": "off",
    "autovacuum": "off",
    "ssl": "on",
    "ssl_cert_file": "'server.crt'",
    "ssl_key_file": "'server.key'",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
}
_HBA = """\
# The suite's superuser connects over the private socket; everyone else by password over TCP.
local all all trust
host all all 127.0.0.1/32 scram-sha-256
"""


def find_bindir() -> Path:
    """The newest installed PostgreSQL server binaries (Debian keeps them off PATH)."""
    override = os.environ.get("UPLOADER_TEST_PG_BINDIR")
    if override:
        return Path(override)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda path: int(Path(path).parent.name) if Path(path).parent.name.isdigit() else 0,
    )
    for candidate in reversed(candidates):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "postgres").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, postgres) not found; "
        "run scripts/install-system-deps.sh as root or set UPLOADER_TEST_PG_BINDIR"
    )


def _server_account() -> system.Account:
    """initdb and postgres refuse to run as root: use the distribution's account when root."""
    if not system.is_root():
        return system.Account.current()
    return system.Account.lookup("postgres") or system.ensure_system_user("uploader-test")


class LocalPostgres(LocalProcess):
    """A cluster in ``<workspace>/postgres`` serving one test role over TCP (and TLS)."""

    name = "postgres"
    # Fast shutdown: sessions are terminated, the port closes.
    stop_signal = signal.SIGINT

    def __init__(self, workspace: Path) -> None:
        super().__init__(workspace, workspace / "postgres" / "server.log")
        self._bindir = find_bindir()
        self._account = _server_account()
        self._dir = workspace / "postgres"
        self._data = self._dir / "data"
        self.port = system.free_port()
        self.ca_cert = workspace / "postgres-ca.crt"

    # --- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        """initdb, configure, start, and create the test role; about a second."""
        self._dir.mkdir(mode=0o755)
        self._account.chown(self._dir)
        initdb = [str(self._bindir / "initdb"), "-D", str(self._data), "-U", SUPERUSER]
        initdb += ["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]
        system.run_checked(initdb, cwd=self._dir, env=self._env(), **self._account.popen_kwargs())
        with open(self._data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(f"\nport = {self.port}\nunix_socket_directories = '{self._dir}'\n")
            conf.writelines(f"{key} = {value}\n" for key, value in _SETTINGS.items())
        (self._data / "pg_hba.conf").write_text(_HBA)
        certificate = make_server_certificate(self._data)
        shutil.copyfile(certificate.ca_cert, self.ca_cert)
        system.chown_tree(self._data, self._account)
        self.start()
        pgadmin.setup_role_and_default_db(self.admin_conninfo())

    def _env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}

    # --- endpoints -----------------------------------------------------------------------

    @property
    def endpoint(self) -> PostgresEndpoint:
        return pgadmin.endpoint_for("127.0.0.1", self.port, pgadmin.DEFAULT_DB, self.ca_cert)

    def admin_conninfo(self, dbname: str = "postgres") -> str:
        return (
            f"host={self._dir} port={self.port} dbname={dbname} user={SUPERUSER} connect_timeout=5"
        )

    def create_database(self, name: str) -> PostgresEndpoint:
        pgadmin.create_database(self.admin_conninfo(), name)
        return pgadmin.endpoint_for("127.0.0.1", self.port, name, self.ca_cert)

    def drop_database(self, name: str) -> None:
        pgadmin.drop_database(self.admin_conninfo(), name)

    # --- control -------------------------------------------------------------------------

    def _before_start(self) -> None:
        # After kill() the lock file names a dead postmaster; nothing else uses this data
        # directory, so it is stale and would only risk a clash with a recycled pid.
        (self._data / "postmaster.pid").unlink(missing_ok=True)

    def _launch(self, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(self._bindir / "postgres"), "-D", str(self._data)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self._dir,
            env=self._env(),
            # Its own session: a Ctrl-C in the terminal reaches only pytest, whose
            # teardown then stops the server in order.
            start_new_session=True,
            **self._account.popen_kwargs(),
        )

    def _ready(self) -> bool:
        try:
            with psycopg.connect(self.admin_conninfo()) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            # Not listening yet, or "the database system is starting up" (crash recovery).
            return False
        return True
