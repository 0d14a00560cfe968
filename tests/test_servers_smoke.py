"""The server fixtures themselves: real servers, isolated per test, and fault controls that bite."""

from __future__ import annotations

import os
import posixpath
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import paramiko
import psycopg
import pytest
from servers import PostgresEndpoint, PostgresServer, SftpDirs, SftpEndpoint, SftpServer

pytestmark = pytest.mark.integration

_seen_databases: set[str] = set()
# What a client sees when the server side of its connection has died.
_DROPPED = (paramiko.SSHException, EOFError, OSError)
FLEET = 25  # engines the fleet tests run at once


@contextmanager
def sftp_session(endpoint: SftpEndpoint) -> Iterator[paramiko.SFTPClient]:
    """Log in the way the uploader must: the key only, and only a host key we already know."""
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(str(endpoint.known_hosts_path))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            endpoint.host,
            port=endpoint.port,
            username=endpoint.username,
            key_filename=str(endpoint.key_path),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
            banner_timeout=10,
            auth_timeout=10,
        )
        with client.open_sftp() as sftp:
            yield sftp
    finally:
        client.close()


def query_one(endpoint: PostgresEndpoint, query: str) -> object:
    with psycopg.connect(endpoint.conninfo()) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


# --- PostgreSQL ------------------------------------------------------------------------------


def test_postgres_answers_as_unprivileged_test_role(pg_endpoint: PostgresEndpoint) -> None:
    with psycopg.connect(pg_endpoint.conninfo()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        user, superuser = conn.execute(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() or (None, None)
    assert (user, superuser) == (pg_endpoint.user, False)
    assert pg_endpoint.port != 5432
    assert pg_endpoint.config_section() == {
        "host": "127.0.0.1",
        "port": pg_endpoint.port,
        "dbname": pg_endpoint.dbname,
        "user": pg_endpoint.user,
        "password": pg_endpoint.password,
    }


@pytest.mark.parametrize("attempt", [1, 2])
def test_each_test_gets_its_own_empty_database(pg_endpoint: PostgresEndpoint, attempt: int) -> None:
    assert pg_endpoint.dbname not in _seen_databases
    _seen_databases.add(pg_endpoint.dbname)
    with psycopg.connect(pg_endpoint.conninfo()) as conn:
        # Would fail on the second run if the database were shared or reused.
        conn.execute("CREATE TABLE events (event_id TEXT PRIMARY KEY)")
        conn.execute("INSERT INTO events VALUES (%s)", [f"run-{attempt}"])


def test_postgres_offers_verifiable_tls(pg_endpoint: PostgresEndpoint) -> None:
    if pg_endpoint.sslrootcert is None:
        pytest.skip("this provider's PostgreSQL offers no TLS")
    conninfo = pg_endpoint.conninfo(sslmode="verify-full", sslrootcert=str(pg_endpoint.sslrootcert))
    with psycopg.connect(conninfo) as conn:
        assert conn.pgconn.ssl_in_use


@pytest.mark.faults
def test_postgres_stop_refuses_and_start_returns_on_same_port(
    postgres_server: PostgresServer, pg_endpoint: PostgresEndpoint
) -> None:
    with psycopg.connect(pg_endpoint.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (1)")
        postgres_server.stop()
        assert not postgres_server.is_running()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_endpoint.conninfo(connect_timeout="2"))
    postgres_server.start()
    assert postgres_server.endpoint.port == pg_endpoint.port
    assert query_one(pg_endpoint, "SELECT count(*) FROM kept") == 1


@pytest.mark.faults
def test_postgres_kill_drops_sessions_and_start_recovers(
    postgres_server: PostgresServer, pg_endpoint: PostgresEndpoint
) -> None:
    with psycopg.connect(pg_endpoint.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE committed (n int)")
        conn.execute("INSERT INTO committed VALUES (42)")
        postgres_server.kill()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    postgres_server.start()
    # Crash recovery keeps what was committed (the WAL outlives the processes).
    assert query_one(pg_endpoint, "SELECT n FROM committed") == 42


@pytest.mark.faults
def test_postgres_left_stopped_by_a_test(postgres_server: PostgresServer) -> None:
    postgres_server.stop()


def test_postgres_running_again_for_the_next_test(
    postgres_server: PostgresServer, pg_endpoint: PostgresEndpoint
) -> None:
    assert postgres_server.is_running()
    assert query_one(pg_endpoint, "SELECT 1") == 1


# --- SFTP ------------------------------------------------------------------------------------


def test_sftp_upload_lands_on_local_disk(sftp_endpoint: SftpDirs) -> None:
    payload = os.urandom(256 * 1024)
    source = sftp_endpoint.local_dir / "source.bin"
    source.write_bytes(payload)
    remote = posixpath.join(sftp_endpoint.remote_video_dir, "event-1.mp4")
    with sftp_session(sftp_endpoint.endpoint) as sftp:
        sftp.put(str(source), remote)
        with sftp.open(remote, "rb") as handle:
            assert handle.read() == payload
    local = sftp_endpoint.endpoint.local_path(remote)
    assert local == sftp_endpoint.local_video_dir / "event-1.mp4"
    assert local.read_bytes() == payload
    section = sftp_endpoint.config_section()
    assert section["remote_json_dir"] == sftp_endpoint.remote_json_dir
    assert Path(section["known_hosts_path"]).exists()


def test_sftp_refuses_an_unknown_host_key(sftp_endpoint: SftpDirs, tmp_path: Path) -> None:
    endpoint = sftp_endpoint.endpoint
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(str(empty))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
            client.connect(
                endpoint.host,
                port=endpoint.port,
                username=endpoint.username,
                key_filename=str(endpoint.key_path),
                look_for_keys=False,
                allow_agent=False,
                timeout=10,
            )
    finally:
        client.close()


def test_sftp_account_is_not_root_and_cannot_write_elsewhere(sftp_endpoint: SftpDirs) -> None:
    endpoint = sftp_endpoint.endpoint
    outside = ["/forbidden.txt"]
    if os.geteuid() == 0:
        # Run as root, the suite gives the tree to a separate account: even the directory
        # holding the tree is out of bounds.
        outside.append(posixpath.join(posixpath.dirname(endpoint.remote_base), "forbidden.txt"))
        assert sftp_endpoint.local_video_dir.stat().st_uid != 0
    assert endpoint.username != "root"
    with sftp_session(endpoint) as sftp:
        for path in outside:
            with pytest.raises(PermissionError):
                sftp.open(path, "wb").close()


@pytest.mark.faults
def test_sftp_stop_refuses_and_start_returns_on_same_port(
    sftp_server: SftpServer, sftp_endpoint: SftpDirs
) -> None:
    port = sftp_endpoint.endpoint.port
    sftp_server.stop()
    assert not sftp_server.is_running()
    with pytest.raises(OSError), sftp_session(sftp_endpoint.endpoint):
        pass
    sftp_server.start()
    assert sftp_server.endpoint.port == port
    with sftp_session(sftp_endpoint.endpoint) as sftp:
        assert sorted(sftp.listdir(sftp_endpoint.remote_dir)) == ["json", "videos"]


@pytest.mark.faults
def test_sftp_kill_drops_established_sessions(
    sftp_server: SftpServer, sftp_endpoint: SftpDirs
) -> None:
    with sftp_session(sftp_endpoint.endpoint) as sftp:
        assert sftp.listdir(sftp_endpoint.remote_video_dir) == []
        sftp_server.kill()
        assert not sftp_server.is_running()
        with pytest.raises(_DROPPED):
            sftp.listdir(sftp_endpoint.remote_video_dir)
    sftp_server.start()
    with sftp_session(sftp_endpoint.endpoint) as sftp:
        assert sftp.listdir(sftp_endpoint.remote_video_dir) == []


@pytest.mark.faults
def test_sftp_stop_ends_established_sessions(
    sftp_server: SftpServer, sftp_endpoint: SftpDirs
) -> None:
    with sftp_session(sftp_endpoint.endpoint) as sftp:
        sftp_server.stop()
        with pytest.raises(_DROPPED):
            sftp.listdir(sftp_endpoint.remote_video_dir)


def test_sftp_running_again_for_the_next_test(sftp_server: SftpServer) -> None:
    assert sftp_server.is_running()


def test_chrooted_account_sees_paths_inside_its_jail(sftp_chroot_endpoint: SftpDirs) -> None:
    endpoint = sftp_chroot_endpoint.endpoint
    assert endpoint.remote_base == "/upload"
    assert sftp_chroot_endpoint.remote_video_dir.startswith("/upload/")
    remote = posixpath.join(sftp_chroot_endpoint.remote_json_dir, "event-1.json")
    with sftp_session(endpoint) as sftp:
        assert sftp.listdir("/") == ["upload"]
        with sftp.open(remote, "wb") as handle:
            handle.write(b'{"eventId": "event-1"}')
        with pytest.raises(PermissionError), sftp.open("/forbidden.txt", "wb"):
            pass
    assert (sftp_chroot_endpoint.local_json_dir / "event-1.json").read_bytes() == (
        b'{"eventId": "event-1"}'
    )


def test_servers_take_a_fleet_of_simultaneous_clients(
    pg_endpoint: PostgresEndpoint, sftp_endpoint: SftpDirs
) -> None:
    """sshd's default MaxStartups (10) would drop some of these handshakes at random."""
    everyone_connected = threading.Barrier(FLEET, timeout=30)

    def one_engine(number: int) -> bytes:
        with (
            psycopg.connect(pg_endpoint.conninfo()) as conn,
            sftp_session(sftp_endpoint.endpoint) as sftp,
        ):
            everyone_connected.wait()
            conn.execute("SELECT 1")
            remote = posixpath.join(sftp_endpoint.remote_json_dir, f"{number}.json")
            with sftp.open(remote, "wb") as handle:
                handle.write(b"%d" % number)
        return sftp_endpoint.endpoint.local_path(remote).read_bytes()

    with ThreadPoolExecutor(FLEET) as pool:
        results = list(pool.map(one_engine, range(FLEET)))
    assert results == [b"%d" % number for number in range(FLEET)]
