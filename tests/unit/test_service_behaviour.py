"""The service loop: instant pick-up, reload without restart, systemd notifications."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_rig import Rig, all_bytes, base_config

from uploader_core import DataUploader, Outcome, hookimpl
from uploader_core.monitor import EventKind
from uploader_core.testing import memory_plugins, write_package


class Running:
    """An engine's ``run()`` in a thread, stopped at the end."""

    def __init__(self, engine: DataUploader) -> None:
        self.engine = engine
        self.completed: dict[str, float] = {}
        self.passes = 0
        self.done = threading.Condition()
        engine.monitor.subscribe(self._on_event)
        self.thread = threading.Thread(target=engine.run)

    def _on_event(self, event: Any) -> None:
        with self.done:
            if event.kind is EventKind.COMPLETED:
                self.completed[event.event_id] = time.time()
            elif event.kind is EventKind.PASS_FINISHED:
                self.passes += 1
            self.done.notify_all()

    def wait_passes(self, count: int, timeout: float = 10) -> None:
        with self.done:
            assert self.done.wait_for(lambda: self.passes >= count, timeout)

    def wait_completed(self, event_id: str, timeout: float) -> float:
        with self.done:
            assert self.done.wait_for(lambda: event_id in self.completed, timeout), event_id
            return self.completed[event_id]

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.request_stop()
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_new_package_is_picked_up_when_it_settles_not_at_the_next_scan(
    make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig(scan_interval_seconds=3600, settle_seconds=0.3)
    with Running(rig.engine) as running:
        running.wait_passes(1)  # the first, empty pass is over; the next is the watcher's
        write_package(rig.pending, "evt_now", age_seconds=0)
        settled_at = (rig.pending / "evt_now.json").stat().st_mtime + 0.3
        completed_at = running.wait_completed("evt_now", timeout=20)
    print(f"\npicked up {completed_at - settled_at:.2f} s after settling (scan interval 1 h)")


def test_without_inotify_the_periodic_scan_still_picks_packages_up(
    make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig(scan_interval_seconds=0.2, watch_pending_dir=False)
    with Running(rig.engine) as running:
        write_package(rig.pending, "evt_scan")
        running.wait_completed("evt_scan", timeout=20)


@pytest.fixture
def reloadable(tmp_path: Path) -> tuple[DataUploader, dict[str, Any]]:
    current = base_config(tmp_path, scan_interval_seconds=30)
    _, _, plugins = memory_plugins()
    engine = DataUploader(current, plugins=plugins, load_entry_points=False,
                          reload_config=lambda: current)
    return engine, current


def test_reload_applies_new_settings_without_a_restart(
    reloadable: tuple[DataUploader, dict[str, Any]]
) -> None:
    engine, current = reloadable
    current["uploader"]["scan_interval_seconds"] = 7
    current["uploader"]["retry"] = {"initial_backoff_seconds": 9, "max_backoff_seconds": 99}
    current["uploader"]["memory_remote"] = {"note": "reloaded"}
    assert engine.reload() is True
    assert engine.scan_interval == 7
    assert engine.settings["memory_remote"]["note"] == "reloaded"


def test_invalid_reload_keeps_the_running_configuration(
    reloadable: tuple[DataUploader, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    engine, current = reloadable
    current["uploader"]["scan_interval_seconds"] = "often"
    assert engine.reload() is False
    assert engine.scan_interval == 30
    assert "scan_interval_seconds: expected a number" in caplog.text


def test_directories_change_only_with_a_restart(
    reloadable: tuple[DataUploader, dict[str, Any]], caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    engine, current = reloadable
    old = engine.settings["pending_upload_dir"]
    current["uploader"]["pending_upload_dir"] = str(tmp_path / "elsewhere")
    assert engine.reload() is True
    assert engine.settings["pending_upload_dir"] == old
    assert "pending_upload_dir changed; it takes effect after a restart" in caplog.text


def test_the_number_of_workers_changes_only_with_a_restart(
    reloadable: tuple[DataUploader, dict[str, Any]], caplog: pytest.LogCaptureFixture,
) -> None:
    engine, current = reloadable
    current["uploader"]["workers"] = 3
    assert engine.reload() is True
    assert engine.settings["workers"] == 1
    assert "uploader.workers changed; it takes effect after a restart" in caplog.text


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(10)
    yield sock
    sock.close()


def test_systemd_hears_ready_status_watchdog_and_stopping(
    make_rig: Callable[..., Rig], notify_socket: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.getsockname())
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ping every 0.2 s at most
    rig = make_rig(scan_interval_seconds=0.3)
    write_package(rig.pending, "evt_sd")
    messages: list[str] = []
    with Running(rig.engine) as running:
        running.wait_completed("evt_sd", timeout=20)
        deadline = time.monotonic() + 10
        while not any("WATCHDOG=1" in m for m in messages) or len(messages) < 4:
            assert time.monotonic() < deadline, messages
            messages.append(notify_socket.recv(4096).decode())
    messages.append(notify_socket.recv(4096).decode())
    assert messages[0].startswith("READY=1")
    assert any("STATUS=1 uploaded" in m for m in messages), messages
    assert any("WATCHDOG=1" in m for m in messages)
    while "STOPPING=1" not in messages[-1]:
        messages.append(notify_socket.recv(4096).decode())


def test_low_free_space_on_the_pending_filesystem_reaches_the_snapshot(
    make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig(scan_interval_seconds=0.1,
                   retention={"low_space_warning_bytes": 2**62, "interval_seconds": 0})
    with Running(rig.engine) as running:
        running.wait_passes(2)
        deadline = time.monotonic() + 10
        while not rig.engine.monitor.snapshot()["disk"]:
            assert time.monotonic() < deadline
            running.wait_passes(running.passes + 1)
    disk = rig.engine.monitor.snapshot()["disk"]
    assert disk["low_space"] is True
    assert disk["pending_free_bytes"] < 2**62


def test_package_still_settling_at_the_end_of_a_pass_is_taken_once_settled(
    make_rig: Callable[..., Rig]
) -> None:
    # No file event will come (the watcher is off): the pass that saw it settling must not
    # leave it for the next scan an hour later.
    rig = make_rig(scan_interval_seconds=3600, settle_seconds=0.3, watch_pending_dir=False)
    write_package(rig.pending, "evt_settling", age_seconds=0)
    with Running(rig.engine) as running:
        running.wait_completed("evt_settling", timeout=20)


def test_reload_requested_during_a_pass_is_applied_before_the_next_job(
    make_rig: Callable[..., Rig], tmp_path: Path
) -> None:
    current = base_config(tmp_path)
    _store, remote, plugins = memory_plugins()
    engine = DataUploader(current, plugins=plugins, load_entry_points=False,
                          reload_config=lambda: current)
    seen: list[float] = []

    def during(job: Any) -> None:
        seen.append(engine.scan_interval)
        if len(seen) == 1:
            current["uploader"]["scan_interval_seconds"] = 99
            engine.request_reload()

    remote.during_transfer = during
    for i in range(3):
        write_package(tmp_path / "pending", f"evt_{i}", age_seconds=30 - i)
    engine.run_once()
    assert seen == [0.05, 99, 99]


def test_with_several_workers_a_reload_waits_until_no_worker_is_transferring(
    tmp_path: Path
) -> None:
    current = base_config(tmp_path, workers=2)
    lock = threading.Lock()
    transferring = 0
    configured_while: list[int] = []  # how many transfers were under way at each configure

    class Configured:
        @hookimpl
        def uploader_configure(self, config: Any) -> None:
            with lock:
                configured_while.append(transferring)

    store, remote, plugins = memory_plugins()
    engine = DataUploader(current, plugins=[*plugins, ("configured", Configured())],
                          load_entry_points=False, reload_config=lambda: current)
    configured_while.clear()

    def during(job: Any) -> None:
        nonlocal transferring
        with lock:
            transferring += 1
            first = len(remote.files) == 0 and current["uploader"]["scan_interval_seconds"] != 99
            if first:
                current["uploader"]["scan_interval_seconds"] = 99
        if first:
            engine.request_reload()
        time.sleep(0.02)  # long enough for the other worker to be transferring too
        with lock:
            transferring -= 1

    remote.during_transfer = during
    for i in range(8):
        write_package(tmp_path / "pending", f"evt_{i}", age_seconds=30 - i)
    before = all_bytes(tmp_path / "pending")
    with engine:
        first = engine.run_once()
        assert engine.scan_interval == 99  # applied when the pass ended
        assert configured_while == [0, 0]  # both workers' plugins, neither transferring
        # The pass ended early for it; the jobs it did not take come in the next.
        assert all(r.outcome is Outcome.COMPLETED for r in first)
        second = engine.run_once()
    assert sorted(r.event_id for r in first + second) == [f"evt_{i}" for i in range(8)]
    assert all(r.outcome is Outcome.COMPLETED for r in second)
    assert all_bytes(tmp_path / "uploaded") == before
    assert all(record.status == "completed" for record in store.records.values())


def test_new_packages_do_not_cut_an_endpoint_backoff_short(
    make_rig: Callable[..., Rig]
) -> None:
    from uploader_core import EndpointUnavailable

    rig = make_rig(scan_interval_seconds=0.1, settle_seconds=0.1,
                   retry={"initial_backoff_seconds": 3, "max_backoff_seconds": 3})
    rig.remote.faults.fail_next(EndpointUnavailable("sftp down", endpoint="sftp"))
    write_package(rig.pending, "evt_0")
    with Running(rig.engine) as running:
        running.wait_passes(1)
        failed_at = time.monotonic()
        for i in range(1, 6):  # Module B keeps writing during the outage
            write_package(rig.pending, f"evt_{i}", age_seconds=0)
            time.sleep(0.2)
        running.wait_completed("evt_0", timeout=20)
        retried_after = time.monotonic() - failed_at
    assert retried_after >= 2.0, f"retried after {retried_after:.1f} s, inside the backoff"
