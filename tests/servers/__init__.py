"""Real PostgreSQL and OpenSSH servers for the integration tests, behind one interface.

``conftest.py`` turns these into fixtures; tests only see the endpoint dataclasses and the
``ServerControl`` methods used for fault injection.
"""

from .endpoints import (
    PostgresEndpoint,
    PostgresServer,
    ServerControl,
    SftpDirs,
    SftpEndpoint,
    SftpServer,
)

__all__ = [
    "PostgresEndpoint",
    "PostgresServer",
    "ServerControl",
    "SftpDirs",
    "SftpEndpoint",
    "SftpServer",
]
