"""Archive retention with the real PostgreSQL plugin: only what the table says is completed goes."""

from __future__ import annotations

import copy
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sites import Site

from uploader_core import Outcome
from uploader_core.config import validate
from uploader_core.plugin_host import PluginHost
from uploader_core.retention import Retention
from uploader_core.testing import write_package

pytestmark = pytest.mark.integration

DAY = 86400.0


@contextmanager
def plugin_host(config: dict[str, Any]) -> Iterator[PluginHost]:
    """The installed plugins, configured as an engine would configure them."""
    host = PluginHost()
    host.load_entry_points()
    host.configure(validate(config, host.config_sections()))
    try:
        yield host
    finally:
        host.shutdown()


def backdate(directory: Path, days: float) -> None:
    stamp = time.time() - days * DAY
    for path in directory.iterdir():
        if not path.name.startswith("."):
            os.utime(path, (stamp, stamp))


def visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def test_only_packages_the_database_confirms_completed_are_deleted(
        make_site: Callable[..., Site], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("uploader_core.retention.BATCH_SIZE", 2)  # several queries
    site = make_site()
    for i in range(5):
        write_package(site.pending, f"evt_{i}", video=4096)
    with site.engine() as engine:
        assert {r.outcome for r in engine.run_once()} == {Outcome.COMPLETED}
    # The table disagrees about two of them, and one package was never recorded at all.
    with psycopg.connect(site.pg.conninfo(), autocommit=True) as conn:
        conn.execute("UPDATE events SET status = 'pending' WHERE event_id = 'evt_1'")
        conn.execute("DELETE FROM events WHERE event_id = 'evt_3'")
    write_package(site.uploaded, "evt_never_recorded")
    backdate(site.uploaded, 30)
    rows_before = site.rows()

    with plugin_host(site.config) as host:
        retention = Retention({"max_age_days": 7, "max_total_bytes": 1}, site.uploaded,
                              confirm=host.confirm_completed, pending_dir=site.pending)
        report = retention.run_once()

    assert sorted(report.deleted) == ["evt_0", "evt_2", "evt_4"]
    assert report.kept_unconfirmed == 3 and report.problem is None
    assert visible(site.uploaded) == sorted(
        f"{event_id}{suffix}" for event_id in ("evt_1", "evt_3", "evt_never_recorded")
        for suffix in (".json", ".mp4"))
    assert site.rows() == rows_before, "retention only reads the table"
    # The remote copies are the records of the deleted packages; they are untouched.
    for i in range(5):
        assert site.remote_video(f"evt_{i}").stat().st_size == 4096


def test_an_unreachable_database_deletes_nothing(make_site: Callable[..., Site]) -> None:
    site = make_site(init_db=False)
    write_package(site.uploaded, "evt_1", age_seconds=30 * DAY)
    config = copy.deepcopy(site.config)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        config["uploader"]["database"]["port"] = probe.getsockname()[1]
    config["uploader"]["database"]["host"] = "127.0.0.1"

    with plugin_host(config) as host:
        retention = Retention({"max_age_days": 1}, site.uploaded, confirm=host.confirm_completed)
        report = retention.run_once()

    assert report.deleted == ()
    assert report.problem is not None and "cannot connect to the database" in report.problem
    assert visible(site.uploaded) == ["evt_1.json", "evt_1.mp4"]
