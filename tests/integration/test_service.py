"""The engine as a long-running service: one per queue, signals, reload."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sites import Site

pytestmark = pytest.mark.integration


def wait_for(predicate: Any, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_second_uploader_on_the_same_queue_exits_at_once_naming_the_first(site: Site) -> None:
    config = site.write_config()
    first = subprocess.Popen([sys.executable, "-m", "uploader_core.cli", "run", "-c",
                              str(config)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (site.pending / ".uploader.lock").exists()
                 and (site.pending / ".uploader.lock").stat().st_size > 0, what="the lock")
        started = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "uploader_core.cli", "run", "-c",
                                 str(config)], capture_output=True, text=True, timeout=30)
        assert time.monotonic() - started < 10
        assert second.returncode == 2
        assert f"pid {first.pid}" in second.stderr
        assert "already processing" in second.stderr
    finally:
        first.terminate()
        _, err = first.communicate(timeout=30)
    assert first.returncode == 0, err


def test_sighup_reloads_the_configuration_file_and_keeps_running(site: Site) -> None:
    import signal

    import yaml

    config = site.write_config()
    engine = subprocess.Popen([sys.executable, "-m", "uploader_core.cli", "run", "-c",
                               str(config)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (site.pending / ".uploader.lock").exists()
                 and (site.pending / ".uploader.lock").stat().st_size > 0, what="the start")
        site.config["uploader"]["scan_interval_seconds"] = "often"
        config.write_text(yaml.safe_dump(site.config))
        engine.send_signal(signal.SIGHUP)
        site.config["uploader"]["scan_interval_seconds"] = 0.5
        time.sleep(1)  # two separate reloads, so the invalid one is seen on its own
        config.write_text(yaml.safe_dump(site.config))
        engine.send_signal(signal.SIGHUP)
        from uploader_core.testing import write_package

        write_package(site.pending, "evt_after_reload")
        wait_for(lambda: (site.uploaded / "evt_after_reload.json").exists(),
                 what="an upload after the reloads")
        assert engine.poll() is None, "a reload must not stop the service"
    finally:
        engine.terminate()
        _, err = engine.communicate(timeout=30)
    assert "configuration not reloaded" in err and "scan_interval_seconds" in err
    assert "configuration reloaded" in err
    assert engine.returncode == 0


def test_new_events_upload_within_a_second_of_settling(site: Site) -> None:
    """Instant pick-up against the real servers: latency from settling to completed."""
    import statistics
    import threading

    from uploader_core.monitor import EventKind
    from uploader_core.testing import write_package

    site.config["uploader"].update(scan_interval_seconds=3600, settle_seconds=0.5)
    engine = site.engine()
    completed: dict[str, float] = {}
    arrived = threading.Condition()

    def on_event(event: Any) -> None:
        if event.kind is EventKind.COMPLETED:
            with arrived:
                completed[event.event_id] = event.time
                arrived.notify_all()

    engine.monitor.subscribe(on_event)
    runner = threading.Thread(target=engine.run)
    runner.start()
    latencies = []
    try:
        for i in range(8):
            write_package(site.pending, f"evt_{i}", video=1_000_000, age_seconds=0)
            settled = (site.pending / f"evt_{i}.json").stat().st_mtime + 0.5

            def has_completed(i: int = i) -> bool:
                return f"evt_{i}" in completed

            with arrived:
                assert arrived.wait_for(has_completed, 30)
            latencies.append(completed[f"evt_{i}"] - settled)
    finally:
        engine.request_stop()
        runner.join(30)
    print(f"\nsettled -> completed: p50 {statistics.median(latencies):.2f} s, "
          f"max {max(latencies):.2f} s over {len(latencies)} events (scan interval 1 h)")
    assert not runner.is_alive()


def _thread_cpus(pid: int) -> dict[str, str]:
    """Each thread of a process, by name and id: the CPUs it may run on (as the kernel says)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            fields = dict(line.split(":\t", 1) for line in
                          (task / "status").read_text().splitlines() if ":\t" in line)
            found[f"{fields['Name']}/{task.name}"] = fields["Cpus_allowed_list"].strip()
    return found


def _cpu_list(cpus: set[int]) -> str:
    """The kernel's way of writing a set of CPUs (``0-3,6``)."""
    ranges: list[list[int]] = []
    for c in sorted(cpus):
        if ranges and c == ranges[-1][1] + 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs or more")
@pytest.mark.parametrize("setting", ["one", "inherited"])
def test_the_service_keeps_its_threads_on_one_cpu_unless_told_otherwise(
        site: Site, setting: str) -> None:
    from uploader_core.testing import write_package

    site.config["uploader"]["cpu_affinity"] = setting
    config = site.write_config()
    engine = subprocess.Popen([sys.executable, "-m", "uploader_core.cli", "run", "-c",
                               str(config)], stderr=subprocess.PIPE, text=True)
    try:
        write_package(site.pending, "evt_cpu")
        wait_for(lambda: (site.uploaded / "evt_cpu.json").exists(), what="an upload")
        # Its connections are open now, the SSH transport's reader among their threads.
        threads = _thread_cpus(engine.pid)
    finally:
        engine.terminate()
        _, err = engine.communicate(timeout=30)
    assert engine.returncode == 0, err
    assert len(threads) >= 4, threads
    given = _cpu_list(os.sched_getaffinity(0))
    if setting == "inherited":
        assert set(threads.values()) == {given}, threads
        assert "engine threads on CPU" not in err
        return
    [chosen] = set(threads.values())
    assert chosen.isdigit() and int(chosen) in os.sched_getaffinity(0), threads
    assert f"engine threads on CPU {chosen} of " in err
