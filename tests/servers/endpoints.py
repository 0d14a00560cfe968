"""What the tests see of a server, whichever provider started it.

Both providers (local processes and docker compose) hand out these objects, so a test never
knows or cares where its PostgreSQL or sshd runs.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class PostgresEndpoint:
    """A database a test may use, reached over TCP with password authentication."""

    host: str
    port: int
    dbname: str
    user: str
    password: str
    # CA certificate that signed the server's TLS certificate (for sslmode=verify-full);
    # None when the server offers no TLS.
    sslrootcert: Path | None = None

    def conninfo(self, **extra: str) -> str:
        """A libpq conninfo string; ``extra`` adds or overrides keywords (sslmode=...)."""
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "password": self.password,
            "connect_timeout": 10,
            **extra,
        }
        return " ".join(f"{key}={_conninfo_quote(str(value))}" for key, value in params.items())

    def config_section(self) -> dict[str, Any]:
        """The ``uploader.database`` section of the uploader configuration."""
        return {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "password": self.password,
        }


def _conninfo_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


@dataclass(frozen=True)
class SftpEndpoint:
    """An SFTP account: key authentication, a pinned host key, and a directory on local disk.

    ``root`` is where the account's files live on this machine, so tests check uploads by
    reading files directly; ``remote_base`` is the same directory as the SFTP client names it
    (differs from ``root`` when the server chroots the user).
    """

    host: str
    port: int
    username: str
    key_path: Path
    known_hosts_path: Path
    root: Path
    remote_base: str

    def config_section(self, remote_video_dir: str, remote_json_dir: str) -> dict[str, Any]:
        """The ``uploader.sftp`` section of the uploader configuration."""
        return {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "ssh_key_path": str(self.key_path),
            "known_hosts_path": str(self.known_hosts_path),
            "remote_video_dir": remote_video_dir,
            "remote_json_dir": remote_json_dir,
        }

    def local_path(self, remote_path: str) -> Path:
        """Where the file the client calls ``remote_path`` lives on local disk."""
        normalized = PurePosixPath(posixpath.normpath(remote_path))
        base = PurePosixPath(self.remote_base)
        if not normalized.is_absolute() or not normalized.is_relative_to(base):
            raise ValueError(f"{remote_path!r} is not under the remote base {self.remote_base!r}")
        return self.root.joinpath(*normalized.relative_to(base).parts)


@dataclass(frozen=True)
class SftpDirs:
    """A per-test remote tree: ``<remote_base>/<test>/videos`` and ``.../json``."""

    endpoint: SftpEndpoint
    remote_dir: str
    remote_video_dir: str
    remote_json_dir: str
    local_dir: Path
    local_video_dir: Path
    local_json_dir: Path

    def config_section(self) -> dict[str, Any]:
        return self.endpoint.config_section(self.remote_video_dir, self.remote_json_dir)


@runtime_checkable
class ServerControl(Protocol):
    """Fault injection on a server. Every call returns once the change is observable."""

    def stop(self) -> None:
        """Shut down cleanly, ending established sessions; returns when the port is closed."""

    def start(self) -> None:
        """Start again on the same port; returns when it accepts connections. No-op if up."""

    def kill(self) -> None:
        """SIGKILL the server and all its session processes, like a crashed host."""

    def restart(self) -> None:
        """stop() then start()."""

    def is_running(self) -> bool:
        """True while the server process is alive."""

    def ensure_running(self) -> None:
        """start() if a previous test left the server down."""


class PostgresServer(ServerControl, Protocol):
    """A PostgreSQL server; ``endpoint`` points at its default test database."""

    @property
    def endpoint(self) -> PostgresEndpoint: ...

    def admin_conninfo(self, dbname: str = "postgres") -> str:
        """A superuser conninfo, for test setup and for checks behind the uploader's back."""

    def create_database(self, name: str) -> PostgresEndpoint:
        """A new empty database owned by the test role."""

    def drop_database(self, name: str) -> None:
        """Drop the database, disconnecting whoever still uses it."""


class SftpServer(ServerControl, Protocol):
    """An SFTP server with one test account."""

    @property
    def endpoint(self) -> SftpEndpoint: ...

    def make_dirs(self, name: str) -> SftpDirs:
        """A fresh ``<remote_base>/<name>/{videos,json}`` tree owned by the account."""
