"""The transaction of one job and its recovery, with in-memory plugins."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from engine_rig import Rig, all_bytes, visible

from uploader_core import (
    ConfigurationError,
    EndpointUnavailable,
    Job,
    JobResult,
    Outcome,
    Phase,
    TransientError,
    hookimpl,
)
from uploader_core.testing import write_package


def outcomes(results: list[JobResult]) -> dict[str, Outcome]:
    return {r.event_id: r.outcome for r in results}


def test_valid_package_is_recorded_uploaded_and_archived(rig: Rig) -> None:
    video, doc = write_package(rig.pending, "evt_a", video=5000)
    original = {"evt_a.mp4": video.read_bytes(), "evt_a.json": doc.read_bytes()}

    results = rig.engine.run_once()

    assert outcomes(results) == {"evt_a": Outcome.COMPLETED}
    record = rig.store.records["evt_a"]
    assert record.status == "completed"
    assert record.remote_video_path == "/videos/evt_a.mp4"
    assert rig.remote.files["/videos/evt_a.mp4"] == original["evt_a.mp4"]
    assert rig.remote.files["/json/evt_a.json"] == original["evt_a.json"]
    assert all_bytes(rig.uploaded) == original
    assert visible(rig.pending) == []


@pytest.mark.parametrize("failing", ["store", "transfer", "complete"])
def test_failure_in_any_phase_leaves_files_and_retry_completes_once(rig: Rig, failing: str) -> None:
    write_package(rig.pending, "evt_b", video=3000)
    before = all_bytes(rig.pending)
    error = TransientError("link dropped")
    {"store": rig.store.store_faults, "transfer": rig.remote.faults,
     "complete": rig.store.complete_faults}[failing].fail_next(error)

    first = rig.engine.run_once()
    assert outcomes(first) == {"evt_b": Outcome.RETRY}
    assert all_bytes(rig.pending) == before, "local files must stay untouched"
    assert all_bytes(rig.uploaded) == {}

    second = rig.engine.run_once()
    assert outcomes(second) == {"evt_b": Outcome.COMPLETED}
    assert list(rig.store.records) == ["evt_b"]
    assert rig.store.records["evt_b"].status == "completed"
    assert all_bytes(rig.uploaded) == before


def test_completed_record_with_files_still_pending_is_archived_without_reupload(rig: Rig) -> None:
    # The state a crash between phase 3 and phase 4 leaves behind.
    write_package(rig.pending, "evt_c")
    rig.engine.run_once()
    for name in ("evt_c.mp4", "evt_c.json"):
        os.rename(rig.uploaded / name, rig.pending / name)
    uploads = rig.remote.uploads

    results = rig.engine.run_once()

    assert outcomes(results) == {"evt_c": Outcome.COMPLETED}
    assert rig.remote.uploads == uploads
    assert sorted(p.name for p in rig.uploaded.iterdir()) == ["evt_c.json", "evt_c.mp4"]
    assert rig.store.records["evt_c"].attempts == 2


def test_crash_between_the_two_archive_moves_is_finished_on_the_next_pass(rig: Rig) -> None:
    write_package(rig.pending, "evt_d")
    rig.engine.run_once()
    os.rename(rig.uploaded / "evt_d.json", rig.pending / "evt_d.json")  # video moved, JSON not
    uploads = rig.remote.uploads

    results = rig.engine.run_once()

    assert outcomes(results) == {"evt_d": Outcome.COMPLETED}
    assert rig.remote.uploads == uploads
    assert sorted(p.name for p in rig.uploaded.iterdir()) == ["evt_d.json", "evt_d.mp4"]
    assert visible(rig.pending) == []


def test_archived_video_whose_record_is_not_completed_is_uploaded_again(rig: Rig) -> None:
    write_package(rig.pending, "evt_e")
    rig.engine.run_once()
    os.rename(rig.uploaded / "evt_e.json", rig.pending / "evt_e.json")
    rig.store.records["evt_e"].status = "pending"

    first = rig.engine.run_once()
    assert outcomes(first) == {"evt_e": Outcome.RETRY}
    assert (rig.pending / "evt_e.mp4").exists()
    second = rig.engine.run_once()
    assert outcomes(second) == {"evt_e": Outcome.COMPLETED}
    assert rig.store.records["evt_e"].status == "completed"


def test_endpoint_outage_stops_the_pass_instead_of_failing_every_job(rig: Rig) -> None:
    for i in range(5):
        write_package(rig.pending, f"evt_{i}", age_seconds=100 - i)
    rig.remote.faults.fail_next(EndpointUnavailable("sftp down", endpoint="sftp"))

    results = rig.engine.run_once()

    # The next job is recorded while evt_0 transfers; its transfer never starts.
    assert [(r.event_id, r.outcome, r.phase) for r in results] == [
        ("evt_0", Outcome.RETRY, Phase.TRANSFER), ("evt_1", Outcome.RETRY, Phase.TRANSFER)]
    assert results[1].reason == "not transferred: the pass stopped"
    assert rig.store.calls == ["store:evt_0", "store:evt_1"]
    assert rig.remote.uploads == 0 and rig.remote.files == {}
    assert len(outcomes(rig.engine.run_once())) == 5


def test_configuration_error_never_quarantines(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    write_package(rig.pending, "evt_f")
    for _ in range(3):
        rig.store.store_faults.fail_next(
            ConfigurationError("password rejected", endpoint="database",
                               setting="uploader.database.password"))
    with caplog.at_level(logging.INFO, logger="uploader"):
        for _ in range(3):
            assert outcomes(rig.engine.run_once()) == {"evt_f": Outcome.RETRY}
    assert not rig.failed.exists() or list(rig.failed.iterdir()) == []
    errors = [r for r in caplog.records if "password rejected" in r.getMessage()]
    assert len(errors) == 1, "the same endpoint error is logged once, not every pass"
    assert "uploader.database.password" in errors[0].getMessage()
    assert outcomes(rig.engine.run_once()) == {"evt_f": Outcome.COMPLETED}


def test_plugin_bug_is_retried_not_quarantined(rig: Rig) -> None:
    write_package(rig.pending, "evt_g")
    rig.remote.faults.fail_next(RuntimeError("bug in a plugin"))
    assert outcomes(rig.engine.run_once()) == {"evt_g": Outcome.RETRY}
    assert outcomes(rig.engine.run_once()) == {"evt_g": Outcome.COMPLETED}


def test_jobs_are_taken_oldest_first(rig: Rig) -> None:
    write_package(rig.pending, "zz_old", age_seconds=300)
    write_package(rig.pending, "aa_new", age_seconds=100)
    write_package(rig.pending, "mm_mid", age_seconds=200)
    assert [r.event_id for r in rig.engine.run_once()] == ["zz_old", "mm_mid", "aa_new"]


def test_transient_failures_back_off_per_job(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(retry={"initial_backoff_seconds": 60, "max_backoff_seconds": 600})
    write_package(rig.pending, "evt_h")
    rig.remote.faults.fail_next(TransientError("video changed"))
    assert outcomes(rig.engine.run_once()) == {"evt_h": Outcome.RETRY}
    waiting = rig.engine.run_once()
    assert outcomes(waiting) == {"evt_h": Outcome.WAITING}
    assert "retrying in" in (waiting[0].reason or "")
    assert rig.remote.uploads == 0


def test_video_changed_during_upload_is_retried(rig: Rig) -> None:
    video, _ = write_package(rig.pending, "evt_i")

    def grow(job: Job) -> None:
        with open(video, "ab") as f:
            f.write(b"more frames")

    rig.remote.during_transfer = grow
    results = rig.engine.run_once()
    assert outcomes(results) == {"evt_i": Outcome.RETRY}
    assert "changed during upload" in (results[0].reason or "")
    assert rig.store.records["evt_i"].status == "pending"
    assert (rig.pending / "evt_i.mp4").exists()


def test_json_deleted_during_the_job_is_kept_in_the_archive(rig: Rig) -> None:
    _, doc = write_package(rig.pending, "evt_j")
    content = doc.read_bytes()
    rig.remote.during_transfer = lambda job: doc.unlink()
    assert outcomes(rig.engine.run_once()) == {"evt_j": Outcome.COMPLETED}
    assert (rig.uploaded / "evt_j.json").read_bytes() == content


def test_unwritable_archive_keeps_files_and_does_not_upload_again(rig: Rig) -> None:
    write_package(rig.pending, "evt_k")
    before = all_bytes(rig.pending)
    rig.uploaded.rmdir()
    rig.uploaded.write_bytes(b"")  # a file where the directory should be: every move fails

    first = rig.engine.run_once()
    assert outcomes(first) == {"evt_k": Outcome.RETRY}
    assert first[0].phase is Phase.ARCHIVE
    assert "uploader.uploaded_dir" in (first[0].reason or "")
    assert all_bytes(rig.pending) == before
    uploads = rig.remote.uploads
    assert outcomes(rig.engine.run_once()) == {"evt_k": Outcome.RETRY}
    assert rig.remote.uploads == uploads, "a completed upload is not sent again"

    rig.uploaded.unlink()
    assert outcomes(rig.engine.run_once()) == {"evt_k": Outcome.COMPLETED}
    assert rig.remote.uploads == uploads
    assert all_bytes(rig.uploaded) == before


def test_stop_during_a_transfer_abandons_it_and_keeps_the_files(rig: Rig) -> None:
    write_package(rig.pending, "evt_l")
    write_package(rig.pending, "evt_m")
    before = all_bytes(rig.pending)
    rig.remote.during_transfer = lambda job: rig.engine.request_stop()
    results = rig.engine.run_once()
    assert results[0].event_id == "evt_l" and results[0].outcome is Outcome.RETRY
    # evt_m may have been recorded while evt_l was transferring; it is never transferred.
    assert [(r.event_id, r.outcome) for r in results[1:]] in ([], [("evt_m", Outcome.RETRY)])
    assert rig.remote.uploads == 0
    assert rig.remote.interrupted == 1
    assert all_bytes(rig.pending) == before
    assert rig.store.records["evt_l"].status == "pending"
    assert all(record.status == "pending" for record in rig.store.records.values())


def test_settling_files_wait_and_hidden_files_are_ignored(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(settle_seconds=30)
    write_package(rig.pending, "evt_new", age_seconds=0)
    write_package(rig.pending, "evt_old", age_seconds=60)
    (rig.pending / ".evt_tmp.json").write_bytes(b"{}")
    results = outcomes(rig.engine.run_once())
    assert results == {"evt_new": Outcome.WAITING, "evt_old": Outcome.COMPLETED}
    assert (rig.pending / ".evt_tmp.json").exists()


def test_video_still_being_written_is_not_uploaded(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(settle_seconds=30)
    video, _ = write_package(rig.pending, "evt_w", age_seconds=60)
    with open(video, "ab") as f:  # Module B is still appending
        f.write(b"x")
    assert outcomes(rig.engine.run_once()) == {"evt_w": Outcome.WAITING}
    assert rig.remote.uploads == 0


def test_orphan_json_is_logged_once_then_quarantined_after_timeout(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(orphan_timeout_seconds=120)
    doc = rig.pending / "evt_o.json"
    rig.pending.mkdir(parents=True, exist_ok=True)
    doc.write_bytes(b'{"eventId": "evt_o"}')
    with caplog.at_level(logging.INFO, logger="uploader"):
        for _ in range(3):
            assert outcomes(rig.engine.run_once()) == {"evt_o": Outcome.WAITING}
    assert len([r for r in caplog.records if "has no video" in r.getMessage()]) == 1

    old = time.time() - 300
    os.utime(doc, (old, old))
    results = rig.engine.run_once()
    assert outcomes(results) == {"evt_o": Outcome.QUARANTINED}
    assert "never appeared" in (results[0].reason or "")
    assert (rig.failed / "evt_o.json").read_bytes() == b'{"eventId": "evt_o"}'
    assert (rig.failed / "evt_o.error.json").exists()


def test_interrupted_quarantine_is_finished(rig: Rig) -> None:
    write_package(rig.pending, "bad id", video=10)
    rig.engine.run_once()
    os.rename(rig.failed / "bad id.json", rig.pending / "bad id.json")
    results = rig.engine.run_once()
    assert outcomes(results) == {"bad id": Outcome.QUARANTINED}
    assert (rig.failed / "bad id.json").exists()
    assert not (rig.pending / "bad id.json").exists()


def test_completed_event_arriving_again_with_different_content_is_quarantined(rig: Rig) -> None:
    write_package(rig.pending, "evt_dup")
    rig.engine.run_once()
    write_package(rig.pending, "evt_dup", document={"eventId": "evt_dup", "changed": True})
    results = rig.engine.run_once()
    assert outcomes(results) == {"evt_dup": Outcome.QUARANTINED}
    assert "different content" in (results[0].reason or "")
    assert (rig.failed / "evt_dup.json").exists()
    assert (rig.uploaded / "evt_dup.json").exists()


class CutAfterProgress:
    """A transfer that moves some bytes and then loses its link, every time."""

    @hookimpl
    def transfer_files(self, job: Job, progress: Any) -> None:
        progress(1000, job.video_size)
        raise EndpointUnavailable("link cut", endpoint="sftp")


def test_a_link_that_keeps_breaking_while_making_progress_is_not_backed_off_further(
    tmp_path: Any,
) -> None:
    from engine_rig import base_config

    from uploader_core import DataUploader

    config = base_config(tmp_path, retry={"initial_backoff_seconds": 10,
                                          "max_backoff_seconds": 1000})
    engine = DataUploader(config, plugins=[("cut", CutAfterProgress())],
                          load_entry_points=False)
    write_package(tmp_path / "pending", "evt_cut")
    waits = []
    for _ in range(4):
        engine.run_once()
        waits.append(engine._endpoint_retries.wait_left("endpoints"))
    assert all(8 <= w <= 12 for w in waits), waits  # the initial delay, +-20 % jitter


def test_an_outage_is_logged_once_while_its_backoff_grows(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(retry={"initial_backoff_seconds": 1, "max_backoff_seconds": 64})
    write_package(rig.pending, "evt_down")
    with caplog.at_level(logging.INFO, logger="uploader"):
        for _ in range(4):
            rig.remote.faults.fail_next(EndpointUnavailable("connection refused",
                                                            endpoint="sftp"))
            rig.engine.run_once()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]


def test_parallel_workers_complete_every_job_exactly_once(
    make_rig: Callable[..., Rig],
) -> None:
    import threading

    rig = make_rig(workers=3)
    in_flight, peak = 0, 0
    lock = threading.Lock()
    both = threading.Barrier(2, timeout=10)

    transfer_threads: set[int] = set()

    def during(job: Job) -> None:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
            first = len(transfer_threads) < 2 and threading.get_ident() not in transfer_threads
            transfer_threads.add(threading.get_ident())
        if first:
            both.wait()  # two workers' first uploads run at the same time, or this times out
        with lock:
            in_flight -= 1

    rig.remote.during_transfer = during
    for i in range(12):
        write_package(rig.pending, f"evt_{i:02d}", age_seconds=100 - i)
    originals = all_bytes(rig.pending)
    results = rig.engine.run_once()
    assert sorted(r.event_id for r in results) == [f"evt_{i:02d}" for i in range(12)]
    assert all(r.outcome is Outcome.COMPLETED for r in results)
    assert peak >= 2
    assert all(record.status == "completed" for record in rig.store.records.values())
    assert all_bytes(rig.uploaded) == originals
    assert visible(rig.pending) == []


def test_an_engine_error_in_one_of_several_workers_ends_the_pass_and_loses_nothing(
    make_rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = make_rig(workers=2)
    for i in range(6):
        write_package(rig.pending, f"evt_{i}", age_seconds=100 - i)
    before = all_bytes(rig.pending)
    process = rig.engine._process_candidate

    def broken(candidate: Any) -> Any:
        if candidate.stem == "evt_0":
            raise RuntimeError("a bug in the engine")
        return process(candidate)

    monkeypatch.setattr(rig.engine, "_process_candidate", broken)
    # Raised on the engine's thread, as one worker's pass would raise it.
    with pytest.raises(RuntimeError, match="a bug in the engine"):
        rig.engine.run_once()
    assert all_bytes(rig.pending) | all_bytes(rig.uploaded) == before
    monkeypatch.undo()
    rig.engine.run_once()
    assert visible(rig.pending) == []
    assert all_bytes(rig.uploaded) == before
    assert all(record.status == "completed" for record in rig.store.records.values())


def test_a_worker_thread_that_cannot_start_ends_the_pass_once_the_others_finish_their_jobs(
    make_rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = make_rig(workers=2)
    for i in range(20):
        write_package(rig.pending, f"evt_{i:02d}", age_seconds=100 - i)
    before = all_bytes(rig.pending)
    start = threading.Thread.start
    refused = threading.Event()

    def refuse_the_second_worker(thread: threading.Thread) -> None:
        if thread.name == "uploader-worker-2":
            refused.set()
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", refuse_the_second_worker)
    # The first worker's first upload waits for that, so it cannot be ahead by chance.
    def wait_for_the_refusal(job: Job) -> None:
        refused.wait(5)

    rig.remote.during_transfer = wait_for_the_refusal
    with pytest.raises(RuntimeError, match="can't start new thread"):
        rig.engine.run_once()
    # The first worker finished the jobs it had (at most one transferring, one recorded) and
    # took no more.
    assert len(visible(rig.uploaded)) <= 2 * 2
    assert all_bytes(rig.pending) | all_bytes(rig.uploaded) == before
    monkeypatch.undo()
    rig.engine.run_once()
    assert visible(rig.pending) == []
    assert all_bytes(rig.uploaded) == before


def test_an_endpoint_outage_starts_no_new_job_in_a_parallel_pass(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(workers=2)
    rig.remote.faults.fail_next(EndpointUnavailable("sftp down", endpoint="sftp"),
                                EndpointUnavailable("sftp down", endpoint="sftp"))
    for i in range(10):
        write_package(rig.pending, f"evt_{i}", age_seconds=100 - i)
    before = all_bytes(rig.pending)
    results = rig.engine.run_once()
    # Each worker had at most one job transferring and the next one recorded: that one is
    # not transferred, and no worker takes a job after the failure.
    assert len(results) <= 4, [r.event_id for r in results]
    assert all(r.outcome is Outcome.RETRY for r in results)
    tried = [r for r in results if r.reason != "not transferred: the pass stopped"]
    assert 1 <= len(tried) <= 2, results
    assert all(r.reason == "sftp down" for r in tried)
    assert all_bytes(rig.pending) == before
    # The second worker may or may not have started a job (and met the second fault) before
    # the first one's failure stopped the pass; the endpoint is back now either way.
    rig.remote.faults.queue.clear()
    assert outcomes(rig.engine.run_once()) == {f"evt_{i}": Outcome.COMPLETED for i in range(10)}
