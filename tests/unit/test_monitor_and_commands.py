"""The engine's monitor and the commands the control socket offers."""

from __future__ import annotations

import json
import threading

import pytest
from engine_rig import Rig

from uploader_core import EndpointUnavailable, Outcome, PermanentJobError
from uploader_core.monitor import Event, EventKind
from uploader_core.testing import write_package


def test_monitor_streams_phases_and_outcomes(rig: Rig) -> None:
    events: list[Event] = []
    rig.engine.monitor.subscribe(events.append)
    write_package(rig.pending, "evt_1")
    write_package(rig.pending, "bad id")
    rig.engine.run_once()
    kinds = [(e.kind, e.event_id, e.data.get("phase")) for e in events]
    assert (EventKind.PHASE, "evt_1", "store_metadata") in kinds
    assert (EventKind.PHASE, "evt_1", "transfer") in kinds
    assert (EventKind.COMPLETED, "evt_1", None) in kinds
    assert (EventKind.QUARANTINED, "bad id", "read") in kinds
    assert kinds[0][0] is EventKind.STATE and kinds[-1][0] is EventKind.PASS_FINISHED


def test_snapshot_lists_pending_recent_quarantined_and_endpoint_health(rig: Rig) -> None:
    write_package(rig.pending, "evt_ok", age_seconds=100)
    write_package(rig.pending, "evt_later", age_seconds=50)
    write_package(rig.pending, "bad id")
    rig.engine.run_once()
    write_package(rig.pending, "evt_wait", video=4096)
    rig.remote.faults.fail_next(EndpointUnavailable("sftp down", endpoint="sftp"))
    rig.engine.run_once()

    snap = rig.engine.monitor.snapshot()
    json.dumps(snap)  # plain data, ready for the socket
    assert [p["event_id"] for p in snap["pending"]] == ["evt_wait"]
    assert snap["pending"][0]["attempts"] == 1
    assert "sftp down" in snap["pending"][0]["last_error"]
    assert snap["pending"][0]["size"] > 4096
    assert {r["event_id"] for r in snap["recent"]} == {"evt_ok", "evt_later"}
    assert snap["quarantined"][0]["event_id"] == "bad id"
    assert snap["endpoints"]["sftp"]["up"] is False

    rig.engine.run_once()
    snap = rig.engine.monitor.snapshot()
    assert snap["endpoints"]["sftp"]["up"] is True
    assert snap["pending_count"] == 0
    assert snap["totals"]["completed"] == 3


def test_job_detail_has_the_history_of_attempts(rig: Rig) -> None:
    write_package(rig.pending, "evt_h")
    rig.remote.faults.fail_next(EndpointUnavailable("timeout", endpoint="sftp"))
    rig.engine.run_once()
    rig.engine.run_once()
    detail = rig.engine.monitor.job("evt_h")
    assert [h["outcome"] for h in detail["history"]] == ["retry", "completed"]
    assert detail["history"][0]["reason"] == "timeout"


def test_requeue_moves_a_quarantined_package_back_and_keeps_the_report(rig: Rig) -> None:
    write_package(rig.pending, "evt_q", document=b'{"eventId": "evt_q", "x": NaN}')
    rig.engine.run_once()
    assert (rig.failed / "evt_q.json").exists()
    (rig.failed / "evt_q.json").write_bytes(b'{"eventId": "evt_q"}')  # fixed by a technician

    moved = rig.engine.requeue("evt_q")

    assert moved == ["evt_q.mp4", "evt_q.json"]
    [report] = [p.name for p in rig.failed.iterdir()]
    assert report.startswith("evt_q.requeued-")
    [result] = rig.engine.run_once()
    assert result.outcome is Outcome.COMPLETED
    assert rig.engine.monitor.snapshot()["quarantined"] == []


def test_requeue_refuses_ids_that_could_escape_the_directory(rig: Rig) -> None:
    with pytest.raises(PermanentJobError):
        rig.engine.requeue("../etc/passwd")
    with pytest.raises(FileNotFoundError):
        rig.engine.requeue("evt_none")


def test_retry_now_forgets_the_backoff(make_rig) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(retry={"initial_backoff_seconds": 600, "max_backoff_seconds": 600})
    write_package(rig.pending, "evt_r")
    rig.remote.faults.fail_next(RuntimeError("glitch"))
    rig.engine.run_once()
    assert rig.engine.run_once()[0].outcome is Outcome.WAITING
    assert rig.engine.retry_now("evt_r") is True
    assert rig.engine.run_once()[0].outcome is Outcome.COMPLETED
    assert rig.engine.retry_now("evt_r") is False


def test_pause_holds_new_jobs_and_resume_releases_them(rig: Rig) -> None:
    write_package(rig.pending, "evt_p")
    rig.engine.pause()
    runner = threading.Thread(target=rig.engine.run)
    runner.start()
    try:
        rig.engine.scan_now()
        assert not rig.engine.monitor.snapshot()["recent"]
        done = threading.Event()
        rig.engine.monitor.subscribe(
            lambda e: done.set() if e.kind is EventKind.COMPLETED else None)
        rig.engine.resume()
        assert done.wait(10)
    finally:
        rig.engine.request_stop()
        runner.join(10)
    assert not runner.is_alive()
    assert rig.engine.monitor.state.value == "stopped"
