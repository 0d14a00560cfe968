"""Prometheus metrics of an engine: counters, gauges, the textfile and the loopback endpoint."""

from __future__ import annotations

import os
import socket
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import prometheus_client
import pytest
from engine_rig import Rig
from prometheus_client.parser import text_string_to_metric_families

from uploader_core import ConfigurationError, EndpointUnavailable, TransientError
from uploader_core.metrics import Metrics
from uploader_core.monitor import Monitor
from uploader_core.retention import RetentionReport
from uploader_core.testing import write_package


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Exposition text parsed by prometheus_client: family -> labels -> value."""
    parsed: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            parsed.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return parsed


def test_counters_and_gauges_follow_jobs_as_they_complete_retry_and_quarantine(
        rig: Rig) -> None:
    metrics = Metrics(rig.engine.monitor)
    metrics.start()
    try:
        sizes = [sum(p.stat().st_size for p in write_package(rig.pending, f"evt_{i}",
                                                             video=1000 * (i + 1),
                                                             age_seconds=100 - i))
                 for i in range(3)]
        write_package(rig.pending, "bad id")
        rig.remote.faults.fail_next(TransientError("link dropped"))  # evt_0 waits for a retry
        rig.engine.run_once()

        assert value(metrics, "uploader_events_uploaded_total") == 2
        assert value(metrics, "uploader_job_failures_total") == 1
        assert value(metrics, "uploader_events_quarantined_total") == 1
        assert value(metrics, "uploader_bytes_sent_total") == sizes[1] + sizes[2]
        assert value(metrics, "uploader_job_duration_seconds_count") == 2
        assert value(metrics, "uploader_job_duration_seconds_bucket", le="+Inf") == 2
        assert value(metrics, "uploader_queue_depth") == 1
        age = value(metrics, "uploader_oldest_pending_age_seconds")
        assert age is not None and 90 < age < 200
        assert value(metrics, "uploader_engine_state", state="running") == 1
        assert value(metrics, "uploader_engine_state", state="idle") == 0
        assert value(metrics, "uploader_last_pass_timestamp_seconds") == pytest.approx(
            time.time(), abs=10)

        rig.remote.faults.fail_next(EndpointUnavailable("sftp down", endpoint="sftp"))
        rig.engine.run_once()
        assert value(metrics, "uploader_endpoint_up", endpoint="sftp") == 0
        assert value(metrics, "uploader_job_failures_total") == 2
        rig.engine.run_once()
        assert value(metrics, "uploader_endpoint_up", endpoint="sftp") == 1
        assert value(metrics, "uploader_events_uploaded_total") == 3
        assert value(metrics, "uploader_queue_depth") == 0
        assert value(metrics, "uploader_oldest_pending_age_seconds") == 0
    finally:
        metrics.close()
    rig.engine.run_once()  # closed: no longer following the engine
    assert value(metrics, "uploader_events_uploaded_total") == 3


def test_each_engine_has_its_own_registry_and_the_global_one_is_untouched(
        make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    rig = make_rig()
    other = Metrics(Monitor())
    with Metrics(rig.engine.monitor) as metrics, other:
        write_package(rig.pending, "evt_1")
        rig.engine.run_once()
        assert value(metrics, "uploader_events_uploaded_total") == 1
        assert value(other, "uploader_events_uploaded_total") == 0
    assert prometheus_client.REGISTRY.get_sample_value("uploader_events_uploaded_total") is None


def test_the_textfile_is_valid_exposition_format_rewritten_atomically_after_each_pass(
        make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "uploader.prom"
    path.parent.mkdir()
    rig = make_rig(metrics={"textfile_path": str(path)})
    metrics = Metrics.for_engine(rig.engine)
    assert metrics.enabled and metrics.http_address is None
    umask = os.umask(0o077)  # a strict service umask must not hide the file from node_exporter
    try:
        metrics.start()
    finally:
        os.umask(umask)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        first = families(path.read_text())  # written at start, before any pass
        assert first["uploader_events_uploaded_total"][()] == 0
        assert first["uploader_queue_depth"][()] == 0

        write_package(rig.pending, "evt_1")
        write_package(rig.pending, "evt_2")
        rig.engine.run_once()
        wait_for(lambda: "uploader_events_uploaded_total 2.0" in path.read_text())
        parsed = families(path.read_text())
        assert parsed["uploader_job_duration_seconds_count"][()] == 2
        assert parsed["uploader_bytes_sent_total"][()] > 2048
        assert parsed["uploader_engine_state"][(("state", "running"),)] == 1
    finally:
        metrics.close()
    # The last write shows the state at close; no temporary file is left beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == ["uploader.prom"]
    assert families(path.read_text())["uploader_events_uploaded_total"][()] == 2


def test_a_textfile_that_node_exporter_would_ignore_or_cannot_be_written_is_refused(
        make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    rig = make_rig(metrics={"textfile_path": str(tmp_path / "uploader.txt")})
    with pytest.raises(ConfigurationError) as info:
        Metrics.for_engine(rig.engine)
    assert "uploader.metrics.textfile_path" in str(info.value) and ".prom" in str(info.value)

    metrics = Metrics(rig.engine.monitor, textfile_path=tmp_path / "missing" / "u.prom")
    with pytest.raises(ConfigurationError) as info:
        metrics.start()
    assert "uploader.metrics.textfile_path" in str(info.value)
    write_package(rig.pending, "evt_1")
    rig.engine.run_once()
    assert value(metrics, "uploader_events_uploaded_total") == 0, "a failed start unsubscribes"


def test_a_write_error_after_start_is_logged_once_and_the_engine_carries_on(
        rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "textfile"
    directory.mkdir()
    metrics = Metrics(rig.engine.monitor, textfile_path=directory / "uploader.prom")
    metrics.start()
    try:
        (directory / "uploader.prom").unlink()
        directory.rmdir()
        for i in range(3):
            write_package(rig.pending, f"evt_{i}")
            rig.engine.run_once()
        wait_for(lambda: any("cannot write the metrics file" in r.getMessage()
                             for r in caplog.records))
        directory.mkdir()
        rig.engine.monitor.pass_finished({})
        wait_for(lambda: (directory / "uploader.prom").exists())
    finally:
        metrics.close()
    assert sum("cannot write the metrics file" in r.getMessage() for r in caplog.records) == 1
    assert value(metrics, "uploader_events_uploaded_total") == 3


def test_the_http_endpoint_serves_on_loopback_and_is_closed_by_close(rig: Rig) -> None:
    metrics = Metrics(rig.engine.monitor, http_port=0)  # 0: a free port, for the test
    metrics.start()
    try:
        address = metrics.http_address
        assert address is not None and address[0] == "127.0.0.1"
        write_package(rig.pending, "evt_1")
        rig.engine.run_once()
        url = f"http://127.0.0.1:{address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            body = response.read().decode()
        parsed = families(body)
        assert parsed["uploader_events_uploaded_total"][()] == 1
        assert parsed["uploader_queue_depth"][()] == 0
    finally:
        metrics.close()
    assert metrics.http_address is None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
    # The port can be listened on again: the listening socket was closed, not just abandoned
    # (SO_REUSEADDR only passes over connections in TIME_WAIT, never over a listener).
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", address[1]))
        probe.listen()


def test_a_port_in_use_is_a_configuration_error_naming_the_setting(
        make_rig: Callable[..., Rig]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rig = make_rig(metrics={"http_port": port})
        metrics = Metrics.for_engine(rig.engine)
        with pytest.raises(ConfigurationError) as info:
            metrics.start()
    assert "uploader.metrics.http_port" in str(info.value)
    assert metrics.http_address is None


def test_nothing_is_exported_by_default(rig: Rig, tmp_path: Path) -> None:
    metrics = Metrics.for_engine(rig.engine)
    assert not metrics.enabled
    with metrics:
        write_package(rig.pending, "evt_1")
        rig.engine.run_once()
        assert metrics.http_address is None
        assert value(metrics, "uploader_events_uploaded_total") == 1
    assert not list(tmp_path.rglob("*.prom"))


def test_retention_reports_become_archive_gauges(rig: Rig) -> None:
    metrics = Metrics(rig.engine.monitor)
    report = RetentionReport(time=time.time(), archive_packages=7, archive_bytes=70_000,
                             deleted=("evt_1", "evt_2"), deleted_bytes=20_000,
                             pending_free_bytes=123_456)
    metrics.observe_retention(report)
    metrics.observe_retention(RetentionReport(time=time.time(), archive_packages=7,
                                              archive_bytes=70_000))
    assert value(metrics, "uploader_archive_packages") == 7
    assert value(metrics, "uploader_archive_bytes") == 70_000
    assert value(metrics, "uploader_archive_deleted_packages_total") == 2
    assert value(metrics, "uploader_archive_deleted_bytes_total") == 20_000
    assert value(metrics, "uploader_pending_free_bytes") == 123_456


def test_retention_runs_of_the_engine_reach_the_metrics(make_rig: Callable[..., Rig]) -> None:
    import threading

    rig = make_rig(scan_interval_seconds=0.05,
                   retention={"max_total_bytes": 10**12, "interval_seconds": 0,
                              "low_space_warning_bytes": 1})
    metrics = Metrics.for_engine(rig.engine)
    with metrics:
        write_package(rig.pending, "evt_1", video=5000)
        runner = threading.Thread(target=rig.engine.run)
        runner.start()
        try:
            wait_for(lambda: (value(metrics, "uploader_archive_packages") or 0) == 1)
            wait_for(lambda: (value(metrics, "uploader_pending_free_bytes") or 0) > 0)
        finally:
            rig.engine.request_stop()
            runner.join(10)
    assert value(metrics, "uploader_archive_bytes") > 5000  # type: ignore[operator]
