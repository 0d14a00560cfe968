"""Archive retention: the oldest confirmed-completed packages go, nothing else ever does."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from engine_rig import Rig, visible

from uploader_core import EndpointUnavailable, Outcome
from uploader_core.plugin import hookimpl
from uploader_core.plugin_host import PluginHost
from uploader_core.retention import Retention, RetentionSettings
from uploader_core.testing import MemoryRemote, MemoryStore, Record, write_package

DAY = 86400.0


def archive(directory: Path, event_id: str, *, days: float, video: int = 1000,
            parts: tuple[str, ...] = (".mp4", ".json")) -> int:
    """An archived package ``days`` old; returns its size in bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.time() - days * DAY
    size = 0
    for suffix in parts:
        path = directory / f"{event_id}{suffix}"
        data = b"v" * video if suffix == ".mp4" else b'{"eventId": "%s"}' % event_id.encode()
        path.write_bytes(data)
        os.utime(path, (stamp, stamp))
        size += len(data)
    return size


def completed_store(*event_ids: str, pending: tuple[str, ...] = ()) -> MemoryStore:
    """A store whose records say ``event_ids`` are completed and ``pending`` are not."""
    store = MemoryStore()
    for event_id in event_ids:
        store.records[event_id] = _record(event_id, "completed")
    for event_id in pending:
        store.records[event_id] = _record(event_id, "pending")
    return store


def _record(event_id: str, status: str) -> Record:
    return Record(event_id, status, {}, "sha")


def confirms(store: MemoryStore) -> list[str]:
    return [c for c in store.calls if c.startswith("confirm:")]


def test_only_packages_the_store_confirms_completed_are_deleted(
        make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture) -> None:
    rig = make_rig()
    for event_id in ("evt_a", "evt_b", "evt_c", "evt_d"):
        write_package(rig.pending, event_id)
    results = rig.engine.run_once()
    assert {r.outcome for r in results} == {Outcome.COMPLETED}
    # The database disagrees about two of them: one row is pending again, one is gone.
    rig.store.records["evt_b"].status = "pending"
    del rig.store.records["evt_d"]
    old = time.time() - 10 * DAY
    for path in rig.uploaded.iterdir():
        os.utime(path, (old, old))

    retention = Retention({"max_age_days": 1, "max_total_bytes": 1}, rig.uploaded,
                          confirm=rig.store.confirm_completed, pending_dir=rig.pending)
    with caplog.at_level(logging.INFO, logger="uploader.retention"):
        report = retention.run_once()
        again = retention.run_once()

    assert sorted(report.deleted) == ["evt_a", "evt_c"]
    assert visible(rig.uploaded) == ["evt_b.json", "evt_b.mp4", "evt_d.json", "evt_d.mp4"]
    assert report.kept_unconfirmed == 2 and not report.limits_met
    assert report.archive_packages == 2 and report.deleted_bytes > 2000
    assert again.deleted == () and again.kept_unconfirmed == 2
    warnings = [r for r in caplog.records if "not confirmed completed" in r.getMessage()]
    assert len(warnings) == 1, "said once, not on every run"
    assert report.to_json()["deleted_count"] == 2


def test_maximum_age_deletes_only_the_packages_older_than_it(tmp_path: Path) -> None:
    for event_id, days in (("old", 10), ("older", 20), ("week", 5), ("new", 1)):
        archive(tmp_path, event_id, days=days)
    store = completed_store("old", "older", "week", "new")
    retention = Retention({"max_age_days": 7}, tmp_path, confirm=store.confirm_completed)

    report = retention.run_once()

    assert report.deleted == ("older", "old")  # oldest first
    assert visible(tmp_path) == ["new.json", "new.mp4", "week.json", "week.mp4"]
    assert report.limits_met and report.problem is None
    store.calls.clear()
    assert retention.run_once().deleted == ()
    assert confirms(store) == [], "within the limits, the store is not even asked"


def test_maximum_total_size_deletes_the_oldest_confirmed_until_it_holds(tmp_path: Path) -> None:
    sizes = {f"evt_{i}": archive(tmp_path, f"evt_{i}", days=10 - i) for i in range(5)}
    package = sizes["evt_0"]
    # The oldest is not confirmed: the next oldest go instead, until three packages' worth is
    # left.
    store = completed_store("evt_1", "evt_2", "evt_3", "evt_4", pending=("evt_0",))
    retention = Retention({"max_total_bytes": 3 * package}, tmp_path,
                          confirm=store.confirm_completed)

    report = retention.run_once()

    assert report.deleted == ("evt_1", "evt_2")
    assert report.kept_unconfirmed == 1
    assert report.archive_bytes == 3 * package and report.limits_met
    assert visible(tmp_path) == [f"evt_{i}{s}" for i in (0, 3, 4) for s in (".json", ".mp4")]


def test_minimum_free_space_deletes_until_enough_is_free(tmp_path: Path) -> None:
    archived = tmp_path / "uploaded"
    size = 0
    for i in range(5):
        size = archive(archived, f"evt_{i}", days=5 - i, video=10_000)
    capacity = 100_000

    def disk_usage(path: Path) -> SimpleNamespace:
        used = sum(p.stat().st_size for p in archived.iterdir())
        return SimpleNamespace(free=capacity - used)

    assert disk_usage(archived).free == capacity - 5 * size
    store = completed_store(*(f"evt_{i}" for i in range(5)))
    retention = Retention({"min_free_bytes": capacity - 3 * size + 1}, archived,
                          confirm=store.confirm_completed, disk_usage=disk_usage)

    report = retention.run_once()

    # Two packages free enough to leave capacity - 3 * size; one byte short: a third goes.
    assert report.deleted == ("evt_0", "evt_1", "evt_2")
    assert report.archive_free_bytes == disk_usage(archived).free == capacity - 2 * size
    assert report.limits_met


def test_low_free_space_of_the_pending_filesystem_is_logged_once_per_crossing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    free = {"bytes": 5_000}
    seen: list[Path] = []

    def disk_usage(path: Path) -> SimpleNamespace:
        seen.append(path)
        return SimpleNamespace(free=free["bytes"])

    retention = Retention({"low_space_warning_bytes": 10_000}, tmp_path / "uploaded",
                          confirm=None, pending_dir=tmp_path / "pending",
                          disk_usage=disk_usage)
    with caplog.at_level(logging.INFO, logger="uploader.retention"):
        reports = [retention.run_once()]
        reports.append(retention.run_once())
        free["bytes"] = 50_000
        reports.append(retention.run_once())
        free["bytes"] = 1_000
        reports.append(retention.run_once())

    assert [r.low_space for r in reports] == [True, True, False, True]
    assert [r.pending_free_bytes for r in reports] == [5_000, 5_000, 50_000, 1_000]
    assert set(seen) == {tmp_path / "pending"}, "only the pending filesystem is asked"
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, text in messages if "free space" in text] == [
        logging.WARNING, logging.INFO, logging.WARNING]
    assert "uploader.retention.low_space_warning_bytes" in messages[0][1]
    assert reports[0].to_json()["low_space"] is True
    assert reports[0].deleted == () and reports[0].problem is None  # nothing to delete


def test_a_package_missing_its_video_or_json_is_deleted_whole_or_left_to_the_engine(
        tmp_path: Path) -> None:
    archived, pending = tmp_path / "uploaded", tmp_path / "pending"
    archive(archived, "video_only", days=9, parts=(".mp4",))
    archive(archived, "json_only", days=8, parts=(".json",))
    # Archived video, JSON still pending: an archive interrupted between its two moves.
    archive(archived, "half_moved", days=7, parts=(".mp4",))
    archive(pending, "half_moved", days=7, parts=(".json",))
    store = completed_store("video_only", "json_only", "half_moved")
    retention = Retention({"max_age_days": 1}, archived, confirm=store.confirm_completed,
                          pending_dir=pending)

    report = retention.run_once()

    assert report.deleted == ("video_only", "json_only")
    assert visible(archived) == ["half_moved.mp4"]
    assert visible(pending) == ["half_moved.json"]
    assert confirms(store) == ["confirm:2"], "the half-moved package is not even a candidate"


def test_only_valid_package_files_of_the_archive_are_ever_touched(tmp_path: Path) -> None:
    archived, pending, failed = tmp_path / "uploaded", tmp_path / "pending", tmp_path / "failed"
    archive(archived, "evt_1", days=30)
    keep = ["evt_1~1.mp4", "notes.txt", "bad id.mp4", "evt_1.mp4.bak", ".evt_2.json",
            ".evt_2.mp4.moving", "README"]
    stamp = time.time() - 30 * DAY
    for name in keep:
        (archived / name).write_bytes(b"x" * 10)
        os.utime(archived / name, (stamp, stamp))
    (archived / "evt_3.json").mkdir()
    (archived / "evt_4.mp4").symlink_to(archived / "notes.txt")
    archive(pending, "evt_5", days=30)
    archive(failed, "evt_6", days=30)
    store = completed_store("evt_1", "evt_3", "evt_4", "evt_5", "evt_6", "evt_2", "bad id")
    retention = Retention({"max_age_days": 1, "max_total_bytes": 1}, archived,
                          confirm=store.confirm_completed, pending_dir=pending)

    report = retention.run_once()

    assert report.deleted == ("evt_1",)
    assert sorted(p.name for p in archived.iterdir()) == sorted(
        [*keep, "evt_3.json", "evt_4.mp4"])
    assert visible(pending) == ["evt_5.json", "evt_5.mp4"]
    assert visible(failed) == ["evt_6.json", "evt_6.mp4"]
    assert confirms(store) == ["confirm:1"]


def test_without_a_confirming_plugin_nothing_is_deleted_and_it_is_said_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    archive(tmp_path, "evt_1", days=30)
    host = PluginHost()
    host.register(MemoryRemote(), "memory_remote")  # transfers, keeps no record
    retention = Retention({"max_age_days": 1}, tmp_path, confirm=host.confirm_completed)

    with caplog.at_level(logging.WARNING, logger="uploader.retention"):
        first = retention.run_once()
        second = retention.run_once()

    assert first.deleted == second.deleted == ()
    assert first.problem is not None and "confirm_completed" in first.problem
    assert not first.limits_met
    assert visible(tmp_path) == ["evt_1.json", "evt_1.mp4"]
    assert len(caplog.records) == 1
    assert "deletes nothing" in caplog.records[0].getMessage()


def test_an_unreachable_store_deletes_nothing_until_it_answers_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    archive(tmp_path, "evt_1", days=30)
    archive(tmp_path, "evt_2", days=29)
    store = completed_store("evt_1", "evt_2")
    down = EndpointUnavailable("cannot connect to the database at db:5432", endpoint="database")
    store.confirm_faults.fail_next(down, down)
    retention = Retention({"max_age_days": 1}, tmp_path, confirm=store.confirm_completed)

    with caplog.at_level(logging.INFO, logger="uploader.retention"):
        failed = [retention.run_once(), retention.run_once()]
        recovered = retention.run_once()

    assert [r.deleted for r in failed] == [(), ()]
    assert failed[0].problem is not None and "db:5432" in failed[0].problem
    assert recovered.deleted == ("evt_1", "evt_2") and recovered.problem is None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("deletes nothing" in m for m in messages) == 1
    assert any("can confirm completed events again" in m for m in messages)


def test_ids_are_confirmed_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("uploader_core.retention.BATCH_SIZE", 3)
    for i in range(8):
        archive(tmp_path, f"evt_{i}", days=20 - i)
    store = completed_store(*(f"evt_{i}" for i in range(8) if i != 4))
    retention = Retention({"max_age_days": 1}, tmp_path, confirm=store.confirm_completed)

    report = retention.run_once()

    assert confirms(store) == ["confirm:3", "confirm:3", "confirm:2"]
    assert report.deleted == tuple(f"evt_{i}" for i in range(8) if i != 4)
    assert visible(tmp_path) == ["evt_4.json", "evt_4.mp4"]


def test_a_stop_request_ends_a_long_run_between_packages(tmp_path: Path) -> None:
    for i in range(4):
        archive(tmp_path, f"evt_{i}", days=20 - i)
    store = completed_store(*(f"evt_{i}" for i in range(4)))
    deleted_so_far: list[int] = []

    def should_stop() -> bool:
        deleted_so_far.append(1)
        return len(deleted_so_far) > 2

    retention = Retention({"max_age_days": 1}, tmp_path, confirm=store.confirm_completed,
                          should_stop=should_stop)
    report = retention.run_once()

    assert report.deleted == ("evt_0", "evt_1")
    assert report.problem is not None and "stopped" in report.problem


def test_runs_at_most_once_per_interval_and_only_when_configured(tmp_path: Path) -> None:
    now = {"t": 1000.0}
    store = completed_store()
    retention = Retention({"max_age_days": 30, "interval_seconds": 600}, tmp_path,
                          confirm=store.confirm_completed, monotonic=lambda: now["t"])
    assert retention.run_if_due() is not None
    now["t"] += 599
    assert retention.run_if_due() is None
    now["t"] += 1
    assert retention.run_if_due() is not None
    assert retention.last_report is not None

    off = Retention({"max_age_days": 0, "max_total_bytes": None, "interval_seconds": 0},
                    tmp_path, confirm=store.confirm_completed)
    assert not off.settings.enabled and off.run_if_due() is None
    off.reconfigure({"max_total_bytes": 10, "interval_seconds": 0})
    assert off.run_if_due() is not None


def test_the_plugin_host_confirms_only_what_every_answering_plugin_confirms() -> None:
    class Partial:
        @hookimpl
        def confirm_completed(self, event_ids: list[str]) -> set[str]:
            return {"evt_1"}

    class NoRecords:
        @hookimpl
        def confirm_completed(self, event_ids: list[str]) -> None:
            return None

    host = PluginHost()
    assert host.confirm_completed(["evt_1"]) is None
    host.register(NoRecords(), "no_records")
    assert host.confirm_completed(["evt_1"]) is None
    host.register(completed_store("evt_1", "evt_2"), "store")
    assert host.confirm_completed(["evt_1", "evt_2", "evt_3"]) == {"evt_1", "evt_2"}
    host.register(Partial(), "partial")
    assert host.confirm_completed(["evt_1", "evt_2"]) == {"evt_1"}


def test_engine_configuration_accepts_the_retention_and_metrics_sections(
        make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(retention={"max_age_days": 90, "max_total_bytes": 8_000_000_000,
                              "min_free_bytes": 500_000_000, "interval_seconds": 300,
                              "low_space_warning_bytes": 1_000_000_000},
                   metrics={"textfile_path": "/var/lib/node_exporter/uploader.prom"})
    settings = RetentionSettings.from_config(rig.engine.settings["retention"])
    assert settings == RetentionSettings(90.0, 8_000_000_000, 500_000_000, 300.0,
                                         1_000_000_000)
    defaults = make_rig().engine.settings
    assert not RetentionSettings.from_config(defaults["retention"]).enabled
    assert defaults["retention"]["interval_seconds"] == 600
    assert defaults["metrics"] == {"textfile_path": None, "http_port": None}
