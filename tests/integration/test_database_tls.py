"""The cloud database is reached over the internet: libpq's TLS settings pass through."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from servers.tls import make_server_certificate
from sites import Site

from uploader_core import Outcome
from uploader_core.testing import write_package

pytestmark = pytest.mark.integration


def test_verify_full_against_the_servers_ca_uploads(make_site: Callable[..., Site]) -> None:
    site = make_site()
    assert site.pg.sslrootcert is not None
    site.config["uploader"]["database"].update(
        sslmode="verify-full", sslrootcert=str(site.pg.sslrootcert))
    write_package(site.pending, "evt_tls")
    with site.engine() as engine:
        [result] = engine.run_once()
        postgres: Any = engine.plugin("postgres")
        with postgres.db.cursor("checking TLS") as cur:
            cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert cur.fetchone() == (True,)
    assert result.outcome is Outcome.COMPLETED
    assert site.rows()["evt_tls"]["status"] == "completed"


def test_untrusted_server_certificate_is_a_configuration_error(
    make_site: Callable[..., Site], tmp_path: Path
) -> None:
    site = make_site()
    (tmp_path / "other-ca").mkdir()
    other_ca = make_server_certificate(tmp_path / "other-ca")
    site.config["uploader"]["database"].update(
        sslmode="verify-full", sslrootcert=str(other_ca.ca_cert))
    write_package(site.pending, "evt_tls")
    with site.engine() as engine:
        [result] = engine.run_once()
    assert result.outcome is Outcome.RETRY
    assert "TLS" in (result.reason or "") or "certificate" in (result.reason or "")
    assert (site.pending / "evt_tls.mp4").exists()
