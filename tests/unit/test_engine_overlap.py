"""With one worker, a job's transfer runs beside the next job's record and the previous job's
completion, with in-memory plugins; each job still goes through its phases in order."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from engine_rig import all_bytes, base_config

from uploader_core import (
    DataUploader,
    EndpointUnavailable,
    Job,
    Outcome,
    PermanentJobError,
    hookimpl,
)
from uploader_core.job import ProgressCallback, RecordState, TransferReceipt, UpcomingJob
from uploader_core.testing import MemoryRemote, memory_plugins, write_package

WAIT = 5.0  # a test waiting on the engine gives up after this instead of hanging


class Timeline:
    """The hooks of each job and the thread each ran on, in the order they ran."""

    def __init__(self) -> None:
        self.changed = threading.Condition()  # notified at each entry
        self.entries: list[tuple[str, str, int]] = []  # (hook, event id, thread)

    def note(self, hook: str, event_id: str) -> None:
        with self.changed:
            self.entries.append((hook, event_id, threading.get_ident()))
            self.changed.notify_all()

    def hooks(self, event_id: str) -> list[str]:
        return [hook for hook, job, _ in self.entries if job == event_id]

    def index(self, hook: str, event_id: str) -> int:
        return [(h, j) for h, j, _ in self.entries].index((hook, event_id))


class TimedStore:
    """Records like MemoryStore, noting each call in the timeline."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.recorded: dict[str, threading.Event] = {}

    def recorded_event(self, event_id: str) -> threading.Event:
        return self.recorded.setdefault(event_id, threading.Event())

    @hookimpl
    def store_metadata(self, job: Job) -> RecordState:
        self.timeline.note("store", job.event_id)
        self.recorded_event(job.event_id).set()
        return RecordState.PENDING

    @hookimpl
    def mark_completed(self, job: Job, receipts: list[TransferReceipt]) -> None:
        self.timeline.note("complete", job.event_id)


class TimedRemote(MemoryRemote):
    def __init__(self, timeline: Timeline) -> None:
        super().__init__()
        self.timeline = timeline

    @hookimpl
    def transfer_files(self, job: Job, progress: ProgressCallback) -> TransferReceipt:
        self.timeline.note("transfer", job.event_id)
        try:
            return super().transfer_files(job, progress)
        finally:
            self.timeline.note("transferred", job.event_id)

    @hookimpl
    def post_quarantine(self, event_id: str, reason: str) -> None:
        self.timeline.note("post_quarantine", event_id)


def timed_engine(root: Path) -> tuple[DataUploader, Timeline, TimedStore, TimedRemote]:
    timeline = Timeline()
    store, remote = TimedStore(timeline), TimedRemote(timeline)
    engine = DataUploader(base_config(root), load_entry_points=False,
                          plugins=[("store", store), ("remote", remote)])
    return engine, timeline, store, remote


def test_the_next_job_is_recorded_while_a_job_transfers(tmp_path: Path) -> None:
    engine, timeline, store, remote = timed_engine(tmp_path)
    for i in range(3):
        write_package(tmp_path / "pending", f"evt_{i}", age_seconds=60 - i)
    before = all_bytes(tmp_path)
    recorded_meanwhile: dict[str, bool] = {}

    def during(job: Job) -> None:
        following = f"evt_{int(job.event_id[-1]) + 1}"
        if following != "evt_3":
            recorded_meanwhile[job.event_id] = store.recorded_event(following).wait(WAIT)

    remote.during_transfer = during
    with engine:
        results = engine.run_once()

    assert recorded_meanwhile == {"evt_0": True, "evt_1": True}
    assert [(r.event_id, r.outcome) for r in results] == [
        (f"evt_{i}", Outcome.COMPLETED) for i in range(3)]
    for i in range(3):
        # Each job's own phases stay in order, and one transfer at a time.
        assert timeline.hooks(f"evt_{i}") == ["store", "transfer", "transferred", "complete"]
    transfers = [entry for entry in timeline.entries if entry[0].startswith("transfer")]
    assert [(hook, job) for hook, job, _ in transfers] == [
        (hook, f"evt_{i}") for i in range(3) for hook in ("transfer", "transferred")]
    transfer_threads = {thread for hook, _, thread in timeline.entries if hook == "transfer"}
    other_threads = {thread for hook, _, thread in timeline.entries
                     if hook in ("store", "complete")}
    assert transfer_threads.isdisjoint(other_threads)
    assert other_threads == {threading.get_ident()}
    assert all_bytes(tmp_path / "uploaded") == before


def test_a_transfer_is_told_which_job_comes_next_once_it_is_recorded(tmp_path: Path) -> None:
    timeline = Timeline()
    store = TimedStore(timeline)
    told: dict[str, str | None] = {}

    class LookingAhead(TimedRemote):
        # pluggy calls an implementation with the hook arguments it names, and this one names
        # ``upcoming`` too: it is only ever called through the hook, never as a TimedRemote.
        @hookimpl
        def transfer_files(  # type: ignore[override]
                self, job: Job, progress: ProgressCallback,
                upcoming: UpcomingJob) -> TransferReceipt:
            following = f"evt_{int(job.event_id[-1]) + 1}"
            if following != "evt_3":
                store.recorded_event(following).wait(WAIT)
                # Recorded, and handed over once this transfer ends.
                deadline = time.monotonic() + WAIT
                while upcoming() is None and time.monotonic() < deadline:
                    time.sleep(0.001)
            seen = upcoming()
            told[job.event_id] = None if seen is None else seen.event_id
            return super().transfer_files(job, progress)

    engine = DataUploader(base_config(tmp_path), load_entry_points=False,
                          plugins=[("store", store), ("remote", LookingAhead(timeline))])
    for i in range(3):
        write_package(tmp_path / "pending", f"evt_{i}", age_seconds=60 - i)
    with engine:
        results = engine.run_once()

    assert [r.outcome for r in results] == [Outcome.COMPLETED] * 3
    assert told == {"evt_0": "evt_1", "evt_1": "evt_2", "evt_2": None}


def test_a_plugin_that_records_and_transfers_is_never_called_from_two_threads(
        tmp_path: Path) -> None:
    timeline = Timeline()

    class Both(TimedStore, TimedRemote):
        def __init__(self) -> None:
            TimedStore.__init__(self, timeline)
            TimedRemote.__init__(self, timeline)

    both = Both()
    engine = DataUploader(base_config(tmp_path), load_entry_points=False,
                          plugins=[("both", both)])
    for i in range(3):
        write_package(tmp_path / "pending", f"evt_{i}", age_seconds=60 - i)
    with engine:
        results = engine.run_once()

    assert [r.outcome for r in results] == [Outcome.COMPLETED] * 3
    assert {thread for _, _, thread in timeline.entries} == {threading.get_ident()}
    # Strictly one job after the other.
    assert [hook for hook, _, _ in timeline.entries] == [
        "store", "transfer", "transferred", "complete"] * 3


def test_post_quarantine_waits_for_the_transfer_under_way(tmp_path: Path) -> None:
    engine, timeline, _store, remote = timed_engine(tmp_path)
    pending = tmp_path / "pending"
    write_package(pending, "evt_0", age_seconds=60)
    write_package(pending, "evt_1", age_seconds=59)
    (pending / "evt_1.json").write_text("{not json")
    release = threading.Event()

    def during(job: Job) -> None:
        release.wait(0.3)  # long enough for the engine thread to reach evt_1

    remote.during_transfer = during
    with engine:
        results = engine.run_once()

    assert [(r.event_id, r.outcome) for r in results] == [
        ("evt_0", Outcome.COMPLETED), ("evt_1", Outcome.QUARANTINED)]
    assert timeline.index("transferred", "evt_0") < timeline.index("post_quarantine", "evt_1")
    assert (tmp_path / "failed" / "evt_1.json").exists()


def test_a_permanent_failure_in_the_transfer_quarantines_while_the_next_job_waits(
        tmp_path: Path) -> None:
    store, remote, plugins = memory_plugins()
    engine = DataUploader(base_config(tmp_path), load_entry_points=False, plugins=plugins)
    for i in range(3):
        write_package(tmp_path / "pending", f"evt_{i}", age_seconds=60 - i)
    before = all_bytes(tmp_path)
    remote.faults.fail_next(PermanentJobError("the server refuses this file"))
    with engine:
        results = engine.run_once()

    assert [(r.event_id, r.outcome) for r in results] == [
        ("evt_0", Outcome.QUARANTINED), ("evt_1", Outcome.COMPLETED),
        ("evt_2", Outcome.COMPLETED)]
    assert {name: data for name, data in all_bytes(tmp_path).items()
            if not name.endswith(".error.json")} == before
    assert store.records["evt_1"].status == store.records["evt_2"].status == "completed"


def test_with_several_workers_each_worker_records_its_next_job_while_one_transfers(
        tmp_path: Path) -> None:
    timeline = Timeline()
    store, remote = TimedStore(timeline), TimedRemote(timeline)
    engine = DataUploader(base_config(tmp_path, workers=2), load_entry_points=False,
                          plugins=[("store", store), ("remote", remote)])
    jobs = 8
    for i in range(jobs):
        write_package(tmp_path / "pending", f"evt_{i}", age_seconds=60 - i)
    before = all_bytes(tmp_path)
    recorded_meanwhile: dict[str, bool] = {}

    def stores() -> list[tuple[str, int]]:
        return [(job, thread) for hook, job, thread in timeline.entries if hook == "store"]

    def during(job: Job) -> None:
        done = stores()
        worker = dict(done)[job.event_id]
        at = done.index((job.event_id, worker))

        def recorded_next() -> bool:
            return any(thread == worker for _, thread in stores()[at + 1:])

        # Held until this job's worker records another job, or until every job is recorded
        # (a worker's last job has no next one).
        with timeline.changed:
            timeline.changed.wait_for(lambda: recorded_next() or len(stores()) == jobs, WAIT)
            recorded_meanwhile[job.event_id] = recorded_next()

    remote.during_transfer = during
    with engine:
        results = engine.run_once()

    assert sorted((r.event_id, r.outcome) for r in results) == [
        (f"evt_{i}", Outcome.COMPLETED) for i in range(jobs)]
    workers = {thread for _, thread in stores()}
    assert len(workers) == 2 and threading.get_ident() not in workers
    # Every job but each worker's last was transferring while its worker recorded the next.
    assert sum(recorded_meanwhile.values()) == jobs - 2, recorded_meanwhile
    for i in range(jobs):
        event_id = f"evt_{i}"
        assert timeline.hooks(event_id) == ["store", "transfer", "transferred", "complete"]
        threads = {hook: thread for hook, job, thread in timeline.entries if job == event_id}
        # Recorded and completed by one worker; transferred on another thread, its own.
        assert threads["store"] == threads["complete"] != threads["transfer"]
    assert all_bytes(tmp_path / "uploaded") == before


def test_a_package_to_quarantine_behind_a_failed_transfer_waits_untouched(
        tmp_path: Path) -> None:
    store, remote, plugins = memory_plugins()
    engine = DataUploader(base_config(tmp_path), load_entry_points=False, plugins=plugins)
    pending = tmp_path / "pending"
    write_package(pending, "evt_0", age_seconds=60)
    write_package(pending, "evt_1", age_seconds=59)
    (pending / "evt_1.json").write_text("{not json")
    before = all_bytes(pending)
    remote.faults.fail_next(EndpointUnavailable("sftp down", endpoint="sftp"))
    with engine:
        # evt_1's quarantine waits for evt_0's transfer, whose failure stops the pass.
        first = engine.run_once()
        assert [(r.event_id, r.outcome) for r in first] == [("evt_0", Outcome.RETRY)]
        assert all_bytes(pending) == before
        assert not any((tmp_path / "failed").iterdir())
        second = engine.run_once()

    assert [(r.event_id, r.outcome) for r in second] == [
        ("evt_0", Outcome.COMPLETED), ("evt_1", Outcome.QUARANTINED)]
    assert (tmp_path / "failed" / "evt_1.json").read_bytes() == before["evt_1.json"]
    assert store.records["evt_0"].status == "completed"
