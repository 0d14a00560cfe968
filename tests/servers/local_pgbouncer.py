"""A private PgBouncer in transaction pooling mode, in front of the session's PostgreSQL.

Fleet tests point many engines at it, as an operator would put one in front of PostgreSQL for
thousands of devices (docs/fleet.md). It listens on a free loopback port and serves every
database of the server it fronts (a ``*`` entry), so each test's own database works through
it. Clients authenticate with SCRAM against the test role's verifier copied from the server's
``pg_authid``: the password itself is never written to disk, and PgBouncer logs in to
PostgreSQL with the keys the client's SCRAM exchange gave it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg

from . import pgadmin, system
from .endpoints import PostgresEndpoint, PostgresServer
from .process import LocalProcess

DEFAULT_POOL_SIZE = 5
_CANDIDATES = (Path("/usr/sbin/pgbouncer"), Path("/usr/bin/pgbouncer"))


class PgBouncerUnavailable(RuntimeError):
    """PgBouncer is not installed or cannot run here; tests that need it skip with this."""


def find_pgbouncer() -> Path:
    for candidate in _CANDIDATES:
        if candidate.exists():
            return candidate
    found = shutil.which("pgbouncer")
    if found:
        return Path(found)
    raise PgBouncerUnavailable(
        "pgbouncer is not installed; run scripts/install-system-deps.sh as root "
        "(or: apt-get install pgbouncer)"
    )


def _server_account() -> system.Account:
    """PgBouncer refuses to run as root: use the distribution's postgres account when root."""
    if not system.is_root():
        return system.Account.current()
    return system.Account.lookup("postgres") or system.ensure_system_user("uploader-test")


class LocalPgBouncer(LocalProcess):
    """PgBouncer under ``<workspace>/pgbouncer``; ``endpoint_for()`` reroutes an endpoint."""

    def __init__(
        self,
        workspace: Path,
        postgres: PostgresServer,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        max_client_conn: int = 500,
    ) -> None:
        super().__init__(workspace, workspace / "pgbouncer" / "pgbouncer.log")
        self._binary = find_pgbouncer()
        self._postgres = postgres
        self._account = _server_account()
        self._dir = workspace / "pgbouncer"
        self._config = self._dir / "pgbouncer.ini"
        self._auth_file = self._dir / "userlist.txt"
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.port = system.free_port()

    # --- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        self._dir.mkdir(mode=0o755)
        self._account.chown(self._dir)
        self._auth_file.touch(mode=0o600)
        self._auth_file.write_text(self._auth_line())
        self._account.chown(self._auth_file)
        self._config.write_text(self._config_text())
        self.start()

    def _auth_line(self) -> str:
        """The test role's SCRAM verifier, as PostgreSQL stores it."""
        with psycopg.connect(self._postgres.admin_conninfo(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [pgadmin.TEST_ROLE]
            ).fetchone()
        if row is None or not str(row[0]).startswith("SCRAM-SHA-256$"):
            raise RuntimeError(f"role {pgadmin.TEST_ROLE!r} has no SCRAM verifier to copy")
        return f'"{pgadmin.TEST_ROLE}" "{row[0]}"\n'

    def _config_text(self) -> str:
        upstream = self._postgres.endpoint
        lines = [
            "[databases]",
            # Every database of the server, under its own name.
            f"* = host={upstream.host} port={upstream.port}",
            "",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = scram-sha-256",
            f"auth_file = {self._auth_file}",
            "pool_mode = transaction",
            f"default_pool_size = {self.pool_size}",
            "min_pool_size = 0",
            "reserve_pool_size = 0",
            f"max_client_conn = {self.max_client_conn}",
            "server_tls_sslmode = disable",
            # Lets tests use the admin console as the test role (SHOW POOLS, RECONNECT).
            f"admin_users = {pgadmin.TEST_ROLE}",
            "log_connections = 0",
            "log_disconnections = 0",
            "log_pooler_errors = 1",
            "server_login_retry = 1",
            "",
        ]
        return "\n".join(lines)

    # --- endpoints -----------------------------------------------------------------------

    def endpoint_for(self, direct: PostgresEndpoint) -> PostgresEndpoint:
        """``direct``'s database, reached through PgBouncer (which offers no TLS to clients)."""
        return replace(direct, host="127.0.0.1", port=self.port, sslrootcert=None)

    def admin_conninfo(self) -> str:
        """The admin console (database ``pgbouncer``); the test role is an admin there."""
        return (
            f"host=127.0.0.1 port={self.port} dbname=pgbouncer user={pgadmin.TEST_ROLE} "
            f"password={pgadmin.TEST_PASSWORD} sslmode=disable connect_timeout=5"
        )

    def console(self) -> psycopg.Connection[Any]:
        """A connection to the admin console; read it with :func:`show`."""
        # The console speaks only the simple query protocol: never prepare.
        return psycopg.connect(self.admin_conninfo(), autocommit=True, prepare_threshold=None)

    def reconnect(self, dbname: str) -> None:
        """Replace the pool's server connections, so they log in again (and pick up settings
        changed with ALTER ROLE, which PostgreSQL applies only at login)."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", dbname):
            raise ValueError(f"not a plain lower-case database name: {dbname!r}")
        with self.console() as console:
            console.execute(f"RECONNECT {dbname}")

    # --- control -------------------------------------------------------------------------

    name = "pgbouncer"

    def _launch(self, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(self._binary), str(self._config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self._dir,
            start_new_session=True,
            **self._account.popen_kwargs(),
        )

    def _ready(self) -> bool:
        try:
            with psycopg.connect(self.admin_conninfo(), autocommit=True) as conn:
                conn.execute("SHOW VERSION")
        except psycopg.OperationalError:
            return False
        return True


def show(console: psycopg.Connection[Any], what: str) -> list[dict[str, Any]]:
    """``SHOW <what>`` on PgBouncer's admin console, one dict per row.

    Without parameters (and on a connection that never prepares, as :meth:`console` opens)
    psycopg uses the simple query protocol, the only one the console speaks.
    """
    if not what.isalpha():
        raise ValueError(f"not a SHOW subject: {what!r}")
    cur = console.execute(f"SHOW {what.upper()}")
    names = [column.name for column in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
