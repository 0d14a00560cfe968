"""Fixtures giving tests a real PostgreSQL and a real OpenSSH SFTP server.

Servers start on first use (tests that do not ask for them start nothing), are shared by the
session, and are stopped at its end. Each test gets its own database and its own remote
directory tree, so tests never see each other's data. Fault tests call ``stop()``, ``kill()``
and ``start()`` on the ``*_server`` fixtures; a server a test leaves down is started again
before the next test that uses it.

``UPLOADER_TEST_SERVERS=docker`` takes the servers from tests/docker-compose.yml instead of
running them as local processes; the fixtures are the same.
"""

from __future__ import annotations

import itertools
import re
import shutil
from collections.abc import Iterator

import pytest
from servers import PostgresEndpoint, PostgresServer, SftpDirs, SftpServer
from servers.local_pgbouncer import LocalPgBouncer, PgBouncerUnavailable
from servers.pool import ServerPool

_SERVER_FIXTURES = ("postgres_server", "sftp_server", "sftp_chroot_server")
_sequence = itertools.count(1)


def _unique_name(request: pytest.FixtureRequest, max_length: int) -> str:
    """``t<n>_<test name>``: unique in the session and recognisable when debugging."""
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")
    return f"t{next(_sequence)}_{slug}"[:max_length].rstrip("_")


@pytest.fixture(scope="session")
def server_pool(request: pytest.FixtureRequest) -> Iterator[ServerPool]:
    pool = ServerPool.from_environment(request.getfixturevalue)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def postgres_server(server_pool: ServerPool) -> PostgresServer:
    """The session's PostgreSQL server: ``.endpoint``, ``admin_conninfo()``, stop/start/kill."""
    return server_pool.postgres()


@pytest.fixture(scope="session")
def sftp_server(server_pool: ServerPool) -> SftpServer:
    """The session's sshd (SFTP only), logging in a non-root account: ``.endpoint``, control."""
    return server_pool.sftp()


@pytest.fixture(scope="session")
def sftp_chroot_server(server_pool: ServerPool) -> SftpServer:
    """An sshd that jails its account (ChrootDirectory), as hosted SFTP services do."""
    try:
        return server_pool.sftp(chroot=True)
    except PermissionError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def pgbouncer(server_pool: ServerPool) -> LocalPgBouncer:
    """A PgBouncer in transaction pooling mode in front of ``postgres_server``.

    ``endpoint_for(pg_endpoint)`` reaches a test's database through it; ``pool_size`` is its
    ``default_pool_size``. Skips when pgbouncer is not installed.
    """
    try:
        server: LocalPgBouncer = server_pool.pgbouncer()
    except PgBouncerUnavailable as error:
        pytest.skip(str(error))
    server.ensure_running()
    return server


@pytest.fixture(autouse=True)
def ensure_servers_running(request: pytest.FixtureRequest) -> None:
    """Start again any server this test uses that an earlier fault test left stopped."""
    for name in _SERVER_FIXTURES:
        if name in request.fixturenames:
            request.getfixturevalue(name).ensure_running()


@pytest.fixture
def pg_endpoint(
    postgres_server: PostgresServer, request: pytest.FixtureRequest
) -> Iterator[PostgresEndpoint]:
    """A new empty database for this test, owned by the (non-superuser) test role."""
    name = _unique_name(request, 63)
    endpoint = postgres_server.create_database(name)
    yield endpoint
    postgres_server.ensure_running()
    postgres_server.drop_database(name)


@pytest.fixture
def sftp_endpoint(sftp_server: SftpServer, request: pytest.FixtureRequest) -> Iterator[SftpDirs]:
    """A new remote tree ``<remote_base>/<test>/{videos,json}`` for this test."""
    dirs = sftp_server.make_dirs(_unique_name(request, 100))
    yield dirs
    shutil.rmtree(dirs.local_dir, ignore_errors=True)


@pytest.fixture
def sftp_chroot_endpoint(
    sftp_chroot_server: SftpServer, request: pytest.FixtureRequest
) -> Iterator[SftpDirs]:
    """Like ``sftp_endpoint``, on the chrooting server (remote paths start at ``/upload``)."""
    dirs = sftp_chroot_server.make_dirs(_unique_name(request, 100))
    yield dirs
    shutil.rmtree(dirs.local_dir, ignore_errors=True)
