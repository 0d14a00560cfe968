"""One place that starts servers on first use and stops every one of them at the end."""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from . import system
from .endpoints import PostgresServer, SftpServer

ENV_VAR = "UPLOADER_TEST_SERVERS"
PROVIDERS = ("local", "docker")


class _Closable(Protocol):
    def close(self) -> None: ...


class ServerPool:
    """Lazily started servers of one provider, shared by the whole test session.

    ``close()`` runs from the session teardown (which pytest also runs after Ctrl-C) and, as a
    fallback, at interpreter exit.
    """

    def __init__(self, provider: str, getfixturevalue: Callable[[str], Any]) -> None:
        if provider not in PROVIDERS:
            raise ValueError(f"{ENV_VAR}={provider!r}: expected one of {', '.join(PROVIDERS)}")
        self.provider = provider
        self._getfixturevalue = getfixturevalue
        self._lock = threading.Lock()
        self._servers: dict[str, Any] = {}
        self._closables: list[_Closable] = []
        self._workspaces: list[Path] = []
        self._swept = False
        atexit.register(self.close)

    @classmethod
    def from_environment(cls, getfixturevalue: Callable[[str], Any]) -> ServerPool:
        return cls(os.environ.get(ENV_VAR, "local").strip() or "local", getfixturevalue)

    def postgres(self) -> PostgresServer:
        server: PostgresServer = self._get("postgres", self._start_postgres)
        return server

    def sftp(self, *, chroot: bool = False) -> SftpServer:
        server: SftpServer = self._get(
            "sftp-chroot" if chroot else "sftp", lambda: self._start_sftp(chroot)
        )
        return server

    def pgbouncer(self) -> Any:
        """A PgBouncer (transaction pooling) in front of ``postgres()``, run locally."""
        postgres = self.postgres()  # outside _get: the lock is not reentrant
        return self._get("pgbouncer", lambda: self._start_pgbouncer(postgres))

    def _get(self, name: str, factory: Callable[[], Any]) -> Any:
        with self._lock:
            if name not in self._servers:
                if not self._swept:
                    system.sweep_stale_workspaces()
                    self._swept = True
                self._servers[name] = factory()
            return self._servers[name]

    def _workspace(self, tag: str, *, for_chroot: bool = False) -> Path:
        path = system.make_workspace(tag, for_chroot=for_chroot)
        self._workspaces.append(path)
        return path

    def _start_postgres(self) -> Any:
        if self.provider == "docker":
            return self._docker().postgres
        from .local import LocalPostgres

        server = LocalPostgres(self._workspace("pg"))
        # Registered before setup, so a server that fails half-way is still stopped.
        self._closables.append(server)
        server.setup()
        return server

    def _start_sftp(self, chroot: bool) -> Any:
        if self.provider == "docker":
            # The image jails every account already: both variants are the same service.
            return self._docker().sftp
        from .local import LocalSshd

        if chroot and not system.is_root():
            raise PermissionError("sshd can only chroot its users when it runs as root")
        server = LocalSshd(self._workspace("sshd", for_chroot=chroot), chroot=chroot)
        self._closables.append(server)
        server.setup()
        return server

    def _start_pgbouncer(self, postgres: PostgresServer) -> Any:
        # Both providers: a docker PostgreSQL is reached on a loopback port like a local one.
        from .local_pgbouncer import LocalPgBouncer

        server = LocalPgBouncer(self._workspace("pgbouncer"), postgres)
        self._closables.append(server)
        server.setup()
        return server

    def _docker(self) -> Any:
        if "docker" not in self._servers:
            from .docker import DockerServers

            servers = DockerServers(self._workspace("docker"), self._getfixturevalue)
            self._servers["docker"] = servers
        return self._servers["docker"]

    def close(self) -> None:
        """Stop everything started and remove the scratch directories; safe to call twice."""
        with self._lock:
            closables, self._closables = self._closables, []
            workspaces, self._workspaces = self._workspaces, []
            self._servers.clear()
        for closable in reversed(closables):
            # One server failing to stop must not keep the others running.
            with contextlib.suppress(Exception):
                closable.close()
        for path in workspaces:
            system.remove_workspace(path)
