"""Engines wired to the real PostgreSQL and sshd of the session, one fresh pair per test."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import PostgresEndpoint, SftpDirs
from sites import DRIVER, Site, site_config


@pytest.fixture
def make_site(tmp_path: Path, pg_endpoint: PostgresEndpoint, sftp_endpoint: SftpDirs
              ) -> Callable[..., Site]:
    """A site whose database already has the events table."""

    def make(name: str = "device", *, init_db: bool = True, **overrides: Any) -> Site:
        root = tmp_path / name
        site = Site(root, site_config(root, pg_endpoint, sftp_endpoint, **overrides),
                    pg_endpoint, sftp_endpoint)
        if init_db:
            with site.engine() as engine:
                engine.init_storage()
        return site

    return make


@pytest.fixture
def site(make_site: Callable[..., Site]) -> Site:
    return make_site()


@pytest.fixture
def driver() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``engine_driver.py`` processes; any still running at the end are killed."""
    started: list[subprocess.Popen[str]] = []

    def start(config: Path, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, str(DRIVER), str(config), *args], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
