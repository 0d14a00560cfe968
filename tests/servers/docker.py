"""The docker compose provider (UPLOADER_TEST_SERVERS=docker): same endpoints, other plumbing.

``tests/docker-compose.yml`` describes the services; pytest-docker brings them up. Ports are
chosen here and passed in, so that a stopped container comes back on the same port.
"""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from . import pgadmin, system
from .endpoints import PostgresEndpoint, SftpDirs, SftpEndpoint
from .keys import known_hosts_line, make_ed25519_key
from .local_sshd import make_sftp_dirs

SFTP_UID = 1001  # the account the compose file creates in the SFTP container


class ComposeService:
    """ServerControl for one compose service."""

    def __init__(
        self, compose: Callable[..., str], service: str, port: int, ready: Callable[[], bool]
    ) -> None:
        self._compose = compose
        self._service = service
        self.port = port
        self.ready = ready

    def is_running(self) -> bool:
        return bool(self._compose("ps", "--status", "running", "-q", self._service).strip())

    def start(self) -> None:
        self._compose("start", self._service)
        system.wait_until(self.ready, f"compose service {self._service}", timeout=60)

    def stop(self) -> None:
        self._compose("stop", self._service)
        system.wait_port_closed(self.port)

    def kill(self) -> None:
        self._compose("kill", "-s", "SIGKILL", self._service)
        system.wait_port_closed(self.port)

    def restart(self) -> None:
        self.stop()
        self.start()

    def ensure_running(self) -> None:
        if not self.is_running():
            self.start()

    def close(self) -> None:
        """pytest-docker's own teardown removes the containers."""


class DockerPostgres(ComposeService):
    def __init__(self, compose: Callable[..., str], port: int, admin_password: str) -> None:
        super().__init__(compose, "postgres", port, self._accepts_queries)
        self._admin_password = admin_password

    def _accepts_queries(self) -> bool:
        try:
            with psycopg.connect(self.admin_conninfo()) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    @property
    def endpoint(self) -> PostgresEndpoint:
        return pgadmin.endpoint_for("127.0.0.1", self.port, pgadmin.DEFAULT_DB)

    def admin_conninfo(self, dbname: str = "postgres") -> str:
        return (
            f"host=127.0.0.1 port={self.port} dbname={dbname} user=postgres "
            f"password={self._admin_password} connect_timeout=5"
        )

    def create_database(self, name: str) -> PostgresEndpoint:
        pgadmin.create_database(self.admin_conninfo(), name)
        return pgadmin.endpoint_for("127.0.0.1", self.port, name)

    def drop_database(self, name: str) -> None:
        pgadmin.drop_database(self.admin_conninfo(), name)


class DockerSftp(ComposeService):
    def __init__(self, compose: Callable[..., str], endpoint: SftpEndpoint) -> None:
        super().__init__(compose, "sftp", endpoint.port, lambda: system.ssh_greets(endpoint.port))
        self.endpoint = endpoint

    def make_dirs(self, name: str) -> SftpDirs:
        return make_sftp_dirs(self.endpoint, name, system.Account("uploader", SFTP_UID, SFTP_UID))


class DockerServers:
    """Both services of the compose file, up once pytest-docker's ``docker_services`` is."""

    def __init__(self, workspace: Path, getfixturevalue: Callable[[str], Any]) -> None:
        sftp_dir = workspace / "sftp"
        sftp_dir.mkdir()
        upload = sftp_dir / "upload"
        upload.mkdir()
        if system.is_root():
            os.chown(upload, SFTP_UID, SFTP_UID)
        else:
            upload.chmod(0o777)  # the container's account is not us
        host_public = make_ed25519_key(sftp_dir / "host_key", "uploader-test-host")
        make_ed25519_key(sftp_dir / "client_key", "uploader-test-client")
        pg_port, sftp_port = system.free_port(), system.free_port()
        (sftp_dir / "known_hosts").write_text(known_hosts_line("127.0.0.1", sftp_port, host_public))
        admin_password = secrets.token_hex(12)
        # Read by docker compose when pytest-docker runs "up".
        os.environ.update(
            UPLOADER_TEST_PG_PORT=str(pg_port),
            UPLOADER_TEST_PG_ADMIN_PASSWORD=admin_password,
            UPLOADER_TEST_SFTP_PORT=str(sftp_port),
            UPLOADER_TEST_SFTP_DIR=str(sftp_dir),
            UPLOADER_TEST_SFTP_UID=str(SFTP_UID),
        )
        base = [
            *shlex.split(getfixturevalue("docker_compose_command")),
            "-f",
            str(getfixturevalue("docker_compose_file")),
            "-p",
            str(getfixturevalue("docker_compose_project_name")),
        ]

        def compose(*args: str) -> str:
            return subprocess.run([*base, *args], check=True, capture_output=True, text=True).stdout

        services = getfixturevalue("docker_services")
        self.postgres = DockerPostgres(compose, pg_port, admin_password)
        services.wait_until_responsive(self.postgres.ready, timeout=60, pause=0.2)
        pgadmin.setup_role_and_default_db(self.postgres.admin_conninfo())
        self.sftp = DockerSftp(
            compose,
            SftpEndpoint(
                host="127.0.0.1",
                port=sftp_port,
                username="uploader",
                key_path=sftp_dir / "client_key",
                known_hosts_path=sftp_dir / "known_hosts",
                root=upload,
                remote_base="/upload",
            ),
        )
        services.wait_until_responsive(self.sftp.ready, timeout=60, pause=0.2)
