"""With one worker, a job's archive moves run beside the next job, with in-memory plugins."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_rig import Rig, all_bytes, base_config, visible

from uploader_core import DataUploader, EndpointUnavailable, Job, Outcome, Phase, filing, hookimpl
from uploader_core.monitor import Event, EventKind
from uploader_core.side_thread import SideThread
from uploader_core.testing import memory_plugins, write_package

HOLD_TIMEOUT = 5.0  # a held move gives up after this: a test fails instead of hanging


class Moves:
    """Wraps ``filing.move_into``: records each move and can hold or fail chosen ones."""

    def __init__(self, real: Callable[..., Path]) -> None:
        self._real = real
        self._lock = threading.Lock()
        self.log: list[str] = []  # "start:<name>" and "end:<name>", in order
        self.threads: dict[str, int] = {}  # file name -> thread that moved it
        self.started: dict[str, threading.Event] = {}
        self.holds: dict[str, threading.Event] = {}
        self.failures: dict[str, BaseException] = {}
        self.timed_out: list[str] = []

    def hold(self, name: str) -> threading.Event:
        """Make the move of ``name`` wait until the returned event is set."""
        self.holds[name] = threading.Event()
        return self.holds[name]

    def moving(self, name: str) -> threading.Event:
        """Set once the move of ``name`` has started."""
        return self.started.setdefault(name, threading.Event())

    def note(self, entry: str) -> None:
        with self._lock:
            self.log.append(entry)

    def __call__(self, src: Path, directory: Path,
                 syncs: filing.DirectorySyncs | None = None) -> Path:
        name = src.name
        self.threads[name] = threading.get_ident()
        self.note(f"start:{name}")
        self.moving(name).set()
        hold = self.holds.get(name)
        if hold is not None and not hold.wait(HOLD_TIMEOUT):
            self.timed_out.append(name)
        try:
            failure = self.failures.pop(name, None)
            if failure is not None:
                raise failure
            return self._real(src, directory, syncs)
        finally:
            self.note(f"end:{name}")


@pytest.fixture
def moves(monkeypatch: pytest.MonkeyPatch) -> Iterator[Moves]:
    recorder = Moves(filing.move_into)
    monkeypatch.setattr(filing, "move_into", recorder)
    yield recorder


class Recorder:
    """A plugin that notes which thread each hook runs on, and what was archived by then."""

    def __init__(self, uploaded: Path) -> None:
        self.uploaded = uploaded
        self.calls: list[tuple[str, str, int]] = []  # (hook, event id, thread)
        self.archived_when_told: dict[str, list[str]] = {}

    @hookimpl
    def pre_upload(self, job: Job) -> None:
        self.calls.append(("pre_upload", job.event_id, threading.get_ident()))

    @hookimpl
    def post_archive(self, job: Job) -> None:
        self.calls.append(("post_archive", job.event_id, threading.get_ident()))
        self.archived_when_told[job.event_id] = visible(self.uploaded)


def rig_with(root: Path, *extra: tuple[str, object]) -> Rig:
    """A one-worker rig with the in-memory plugins and ``extra`` ones."""
    store, remote, plugins = memory_plugins()
    engine = DataUploader(base_config(root), plugins=[*plugins, *extra], load_entry_points=False)
    return Rig(engine, store, remote, root / "pending", root / "uploaded", root / "failed")


def packages(rig: Rig, count: int) -> dict[str, bytes]:
    """``count`` packages, evt_1 the oldest; every file's bytes, by name."""
    for i in range(1, count + 1):
        write_package(rig.pending, f"evt_{i}", video=2000 + i, age_seconds=100 - i)
    return all_bytes(rig.pending)


def test_next_job_is_transferred_while_the_previous_archive_is_still_moving(
    rig: Rig, moves: Moves
) -> None:
    originals = packages(rig, 2)
    release = moves.hold("evt_1.mp4")

    def transfer(job: Job) -> None:
        moves.note(f"transfer:{job.event_id}")
        if job.event_id == "evt_2":
            release.set()

    rig.remote.during_transfer = transfer

    results = rig.engine.run_once()

    assert moves.timed_out == [], "the first archive move was never overlapped"
    assert moves.log.index("transfer:evt_2") < moves.log.index("end:evt_1.mp4"), moves.log
    assert moves.threads["evt_1.mp4"] != threading.get_ident()
    assert [(r.event_id, r.outcome) for r in results] == [("evt_1", Outcome.COMPLETED),
                                                          ("evt_2", Outcome.COMPLETED)]
    for event_id in ("evt_1", "evt_2"):
        assert moves.log.index(f"end:{event_id}.mp4") < moves.log.index(f"start:{event_id}.json")
    assert all_bytes(rig.uploaded) == originals
    assert visible(rig.pending) == []
    assert rig.remote.uploads == 2
    assert {k: r.status for k, r in rig.store.records.items()} == {"evt_1": "completed",
                                                                    "evt_2": "completed"}


def test_results_stay_in_the_order_the_jobs_started(rig: Rig, moves: Moves) -> None:
    originals = packages(rig, 3)
    release = moves.hold("evt_1.mp4")

    def transfer(job: Job) -> None:
        if job.event_id == "evt_2":
            release.set()
            raise ValueError("a plugin bug in the middle")

    rig.remote.during_transfer = transfer

    results = rig.engine.run_once()

    assert moves.timed_out == []
    assert [(r.event_id, r.outcome) for r in results] == [("evt_1", Outcome.COMPLETED),
                                                          ("evt_2", Outcome.RETRY),
                                                          ("evt_3", Outcome.COMPLETED)]
    assert visible(rig.pending) == ["evt_2.json", "evt_2.mp4"]
    assert all_bytes(rig.pending) | all_bytes(rig.uploaded) == originals


@pytest.mark.parametrize("failing", ["evt_2.mp4", "evt_2.json"])
def test_a_failing_archive_move_is_retried_without_another_upload(
    rig: Rig, moves: Moves, failing: str
) -> None:
    originals = packages(rig, 3)
    moves.failures[failing] = OSError(errno.ENOSPC, "No space left on device")

    first = rig.engine.run_once()

    assert moves.threads[failing] != threading.get_ident(), "moved on the engine thread"
    assert [(r.event_id, r.outcome) for r in first] == [("evt_1", Outcome.COMPLETED),
                                                        ("evt_2", Outcome.RETRY),
                                                        ("evt_3", Outcome.COMPLETED)]
    assert first[1].phase is Phase.ARCHIVE
    assert first[1].reason == (
        f"evt_2 is uploaded and recorded, but moving it into {rig.uploaded} failed: No space "
        f"left on device; the files stay in {rig.pending} and archiving is retried in 0 s "
        "(setting: uploader.uploaded_dir)")
    assert rig.store.records["evt_2"].status == "completed"
    assert "evt_2.json" in visible(rig.pending), "the trigger stays until it is archived"
    if failing == "evt_2.mp4":
        assert all_bytes(rig.pending) == {n: b for n, b in originals.items()
                                          if n.startswith("evt_2")}
    assert all_bytes(rig.pending) | all_bytes(rig.uploaded) == originals
    assert rig.engine.monitor.job("evt_2")["last_error"] == first[1].reason
    uploads = rig.remote.uploads
    assert uploads == 3

    second = rig.engine.run_once()

    assert [(r.event_id, r.outcome) for r in second] == [("evt_2", Outcome.COMPLETED)]
    assert rig.remote.uploads == uploads, "a completed upload is not sent again"
    assert all_bytes(rig.uploaded) == originals
    assert visible(rig.pending) == []


def test_a_bug_in_the_middle_of_the_moves_ends_the_pass_and_the_next_pass_finishes_them(
    rig: Rig, moves: Moves
) -> None:
    originals = packages(rig, 3)
    moves.failures["evt_2.json"] = ValueError("a bug in a move")

    with pytest.raises(ValueError, match="a bug in a move"):
        rig.engine.run_once()

    assert all_bytes(rig.pending) | all_bytes(rig.uploaded) == originals
    assert "evt_2.json" in visible(rig.pending), "the trigger stays until it is archived"
    second = rig.engine.run_once()

    assert {r.event_id for r in second} >= {"evt_2"}
    assert all(r.outcome is Outcome.COMPLETED for r in second)
    assert all_bytes(rig.uploaded) == originals
    assert visible(rig.pending) == []
    assert rig.remote.uploads == 3, "nothing is uploaded twice"


def test_hooks_and_monitor_hear_of_an_archive_on_the_engine_thread(
    tmp_path: Path, moves: Moves
) -> None:
    recorder = Recorder(tmp_path / "uploaded")
    rig = rig_with(tmp_path, ("recorder", recorder))
    engine = rig.engine
    originals = packages(rig, 3)
    completed: list[tuple[str, int]] = []

    def on_event(event: Event) -> None:
        if event.kind is EventKind.COMPLETED:
            completed.append((event.event_id or "", threading.get_ident()))

    engine.monitor.subscribe(on_event)
    engine_thread = threading.get_ident()

    results = engine.run_once()

    assert [r.outcome for r in results] == [Outcome.COMPLETED] * 3
    assert engine_thread not in {moves.threads[name] for name in originals}
    told = [(event_id, thread) for hook, event_id, thread in recorder.calls
            if hook == "post_archive"]
    assert told == [("evt_1", engine_thread), ("evt_2", engine_thread),
                    ("evt_3", engine_thread)]
    assert completed == told
    assert all(thread == engine_thread for _, _, thread in recorder.calls)
    for event_id, archived in recorder.archived_when_told.items():
        assert {f"{event_id}.json", f"{event_id}.mp4"} <= set(archived)
    assert all_bytes(rig.uploaded) == originals
    assert engine.monitor.snapshot()["totals"]["completed"] == 3
    engine.close()


def test_an_endpoint_that_fails_after_an_archived_job_is_still_reported_down(
    rig: Rig, moves: Moves
) -> None:
    packages(rig, 2)
    rig.remote.faults.fail_next(EndpointUnavailable("connection refused", endpoint="sftp"))
    rig.engine.run_once()
    assert rig.engine.monitor.endpoints_down() == ["sftp"]
    release = moves.hold("evt_1.mp4")

    def transfer(job: Job) -> None:
        if job.event_id == "evt_2":
            # Let the first job's archive end only once this job's failure is under way.
            threading.Timer(0.2, release.set).start()
            raise EndpointUnavailable("connection reset", endpoint="sftp")

    rig.remote.during_transfer = transfer

    results = rig.engine.run_once()

    assert moves.timed_out == []
    assert [(r.event_id, r.outcome) for r in results] == [("evt_1", Outcome.COMPLETED),
                                                          ("evt_2", Outcome.RETRY)]
    assert rig.engine.monitor.endpoints_down() == ["sftp"]


def test_a_stop_during_the_next_transfer_waits_for_the_archive_in_flight(
    rig: Rig, moves: Moves
) -> None:
    originals = packages(rig, 3)
    release = moves.hold("evt_1.mp4")

    def transfer(job: Job) -> None:
        if job.event_id == "evt_2":
            assert moves.moving("evt_1.mp4").wait(HOLD_TIMEOUT)
            rig.engine.request_stop()
            # The move ends well after the engine has given up on this transfer.
            threading.Timer(0.3, release.set).start()

    rig.remote.during_transfer = transfer

    results = rig.engine.run_once()
    after_run_once = list(moves.log)
    rig.engine.close()

    assert moves.timed_out == []
    assert after_run_once[-1] == "end:evt_1.json", after_run_once
    outcomes = [(r.event_id, r.outcome) for r in results]
    assert outcomes[:2] == [("evt_1", Outcome.COMPLETED), ("evt_2", Outcome.RETRY)]
    # The next job may have been recorded while evt_2 was transferring; its transfer never
    # starts once the stop is asked for.
    assert outcomes[2:] in ([], [("evt_3", Outcome.RETRY)])
    if "evt_3" in rig.store.records:
        assert rig.store.records["evt_3"].status == "pending"
    assert not any("evt_3" in path for path in rig.remote.files)
    assert visible(rig.uploaded) == ["evt_1.json", "evt_1.mp4"]
    assert visible(rig.pending) == ["evt_2.json", "evt_2.mp4", "evt_3.json", "evt_3.mp4"]
    assert all_bytes(rig.pending) | all_bytes(rig.uploaded) == originals
    assert rig.store.records["evt_2"].status == "pending"
    assert moves.log == after_run_once, "nothing moved after run_once returned"


class StopOnceCompleted:
    """Asks the engine to stop once the first job is recorded completed, before its archive."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.engine: DataUploader | None = None

    @hookimpl(trylast=True)
    def mark_completed(self, job: Job, receipts: Any) -> None:
        assert self.engine is not None
        self.engine.request_stop()
        # The archive move then outlasts the engine's decision to stop.
        threading.Timer(0.3, self.release.set).start()


def test_run_returns_only_when_the_archive_in_flight_is_done(
    tmp_path: Path, moves: Moves
) -> None:
    release = moves.hold("evt_1.mp4")
    stopper = StopOnceCompleted(release)
    rig = rig_with(tmp_path, ("stopper", stopper))
    stopper.engine = rig.engine
    originals = packages(rig, 2)

    def run() -> None:
        rig.engine.run()
        moves.note("run returned")

    runner = threading.Thread(target=run, name="engine")
    started = time.monotonic()
    runner.start()
    runner.join(HOLD_TIMEOUT * 2)

    assert not runner.is_alive()
    assert moves.timed_out == []
    assert time.monotonic() - started >= 0.3
    assert moves.log[-2:] == ["end:evt_1.json", "run returned"], moves.log
    assert visible(rig.uploaded) == ["evt_1.json", "evt_1.mp4"]
    assert all_bytes(rig.pending) | all_bytes(rig.uploaded) == originals
    assert rig.remote.uploads == 1
    assert rig.engine.monitor.snapshot()["totals"]["completed"] == 1


def test_each_of_several_workers_archives_on_a_thread_of_its_own(
    make_rig: Callable[..., Rig], moves: Moves
) -> None:
    rig = make_rig(workers=2)
    originals = packages(rig, 4)
    transfer_threads: dict[str, int] = {}
    both = threading.Barrier(2, timeout=HOLD_TIMEOUT)

    def transfer(job: Job) -> None:
        thread = threading.get_ident()
        first = thread not in transfer_threads.values()
        transfer_threads[job.event_id] = thread
        if first:
            both.wait()  # both workers transfer at once, or this times out

    rig.remote.during_transfer = transfer

    results = rig.engine.run_once()

    assert sorted((r.event_id, r.outcome) for r in results) == [
        (f"evt_{i}", Outcome.COMPLETED) for i in range(1, 5)]
    archivers = {moves.threads[f"{event_id}.mp4"] for event_id in transfer_threads}
    assert len(archivers) == 2
    assert archivers.isdisjoint(transfer_threads.values())
    assert threading.get_ident() not in archivers
    for event_id in transfer_threads:
        assert moves.threads[f"{event_id}.json"] == moves.threads[f"{event_id}.mp4"]
    assert all_bytes(rig.uploaded) == originals
    assert visible(rig.pending) == []


def test_a_side_thread_hands_back_outcomes_in_order_and_bounds_the_work() -> None:
    gate = threading.Event()
    seen: list[int] = []

    def move(n: int) -> int:
        if n == 1:
            gate.wait(HOLD_TIMEOUT)
        if n == 2:
            raise OSError(errno.EACCES, "Permission denied")
        seen.append(n)
        return n * 10

    archiver: SideThread[int, int] = SideThread(move, name="test-archiver", limit=1)
    archiver.submit(1)
    assert archiver.next_done() is None, "still moving"
    blocked = threading.Thread(target=archiver.submit, args=(2,))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive(), "a second item waits while the first one moves"
    gate.set()
    blocked.join(HOLD_TIMEOUT)
    archiver.submit(3)
    outcomes: list[Any] = []
    while (done := archiver.next_done(wait=True)) is not None:
        outcomes.append(done)
    archiver.close()

    assert [o.item for o in outcomes] == [1, 2, 3]
    assert [o.value for o in outcomes] == [10, None, 30]
    assert isinstance(outcomes[1].error, OSError)
    assert outcomes[0].finished <= outcomes[1].finished <= outcomes[2].finished
    assert seen == [1, 3]
    assert len(archiver) == 0


class Told:
    """A plugin that notes in ``moves.log`` when it hears that a job is archived."""

    def __init__(self, moves: Moves) -> None:
        self.moves = moves

    @hookimpl
    def post_archive(self, job: Job) -> None:
        self.moves.note(f"told:{job.event_id}")


def test_archive_moves_share_fsyncs_and_each_video_is_durable_before_its_json_moves(
    tmp_path: Path, moves: Moves, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = rig_with(tmp_path, ("told", Told(moves)))
    originals = packages(rig, 6)
    last_transfer = threading.Event()
    real_fsync = filing.fsync_dir
    fsyncs: list[str] = []

    def fsync_dir(directory: Path) -> None:
        # The first batch's fsync lasts until the last job is being transferred, as on a slow
        # card: the jobs completed meanwhile wait for the archiver.
        if not fsyncs and not last_transfer.wait(HOLD_TIMEOUT):
            moves.timed_out.append("fsync")
        fsyncs.append(directory.name)
        moves.note(f"fsync:{directory.name}")
        real_fsync(directory)

    def transfer(job: Job) -> None:
        if job.event_id == "evt_6":
            last_transfer.set()

    monkeypatch.setattr(filing, "fsync_dir", fsync_dir)
    rig.remote.during_transfer = transfer

    results = rig.engine.run_once()

    assert moves.timed_out == []
    assert [r.outcome for r in results] == [Outcome.COMPLETED] * 6
    assert all_bytes(rig.uploaded) == originals
    assert visible(rig.pending) == []
    # One job at a time took 4 fsyncs each (24); here the jobs that waited share them: the
    # first job alone, then at most two batches.
    assert 4 <= len(fsyncs) <= 12, fsyncs
    log = moves.log

    def synced_between(start: int, end: int) -> bool:
        """Both directories synced in log[start:end], the archive first."""
        between = log[start:end]
        return ("fsync:uploaded" in between and "fsync:pending" in between
                and between.index("fsync:uploaded") < between.index("fsync:pending"))

    for i in range(1, 7):
        video_moved = log.index(f"end:evt_{i}.mp4")
        json_moving = log.index(f"start:evt_{i}.json")
        json_moved = log.index(f"end:evt_{i}.json")
        told = log.index(f"told:evt_{i}")
        assert synced_between(video_moved, json_moving), (i, log)
        assert synced_between(json_moved, told), (i, log)


def test_a_batched_side_thread_runs_what_waited_in_one_call_and_hands_back_each_outcome(
) -> None:
    started = threading.Event()
    gate = threading.Event()
    batches: list[list[int]] = []

    def move(items: list[int]) -> list[int | BaseException]:
        batches.append(list(items))
        started.set()
        gate.wait(HOLD_TIMEOUT)
        return [OSError(errno.ENOSPC, "No space left on device") if n == 3 else n * 10
                for n in items]

    archiver: SideThread[int, int] = SideThread.batched(move, name="test-archiver", limit=8)
    archiver.submit(1)
    assert started.wait(HOLD_TIMEOUT)
    for n in (2, 3, 4):
        archiver.submit(n)
    assert len(archiver) == 4
    gate.set()
    outcomes: list[Any] = []
    while (done := archiver.next_done(wait=True)) is not None:
        outcomes.append(done)
    archiver.close()

    assert batches == [[1], [2, 3, 4]]
    assert [o.item for o in outcomes] == [1, 2, 3, 4]
    assert [o.value for o in outcomes] == [10, 20, None, 40]
    assert [type(o.error) for o in outcomes] == [type(None), type(None), OSError, type(None)]


@pytest.mark.parametrize("wrong", ["raises", "miscounts"])
def test_a_batch_that_fails_as_a_whole_fails_each_of_its_items(wrong: str) -> None:
    def move(items: list[int]) -> list[int | BaseException]:
        if wrong == "raises":
            raise ValueError("a bug")
        return []

    archiver: SideThread[int, int] = SideThread.batched(move, name="test-archiver", limit=8)
    archiver.submit(1)
    first = archiver.next_done(wait=True)
    archiver.close()

    assert first is not None and first.item == 1 and first.value is None
    assert isinstance(first.error, ValueError if wrong == "raises" else RuntimeError)
    assert archiver.next_done() is None


@pytest.mark.parametrize("ended_by", ["awaited", "closed", "full"])
def test_a_lingering_side_thread_waits_for_more_until_its_outcome_is_wanted(
    ended_by: str
) -> None:
    batches: list[list[int]] = []

    def move(items: list[int]) -> list[int | BaseException]:
        batches.append(list(items))
        return list(items)

    archiver: SideThread[int, int] = SideThread.batched(
        move, name="test-archiver", limit=3, linger=4 * HOLD_TIMEOUT)
    archiver.submit(1)
    archiver.submit(2)
    time.sleep(0.2)
    assert batches == [], "it lingers for more"
    started = time.monotonic()
    if ended_by == "awaited":
        first = archiver.next_done(wait=True)
        assert first is not None and first.value == 1
    elif ended_by == "closed":
        archiver.close()
    else:
        archiver.submit(3)
        while not batches and time.monotonic() - started < HOLD_TIMEOUT:
            time.sleep(0.01)
    archiver.close()

    assert time.monotonic() - started < HOLD_TIMEOUT, "it lingered on"
    assert batches == ([[1, 2, 3]] if ended_by == "full" else [[1, 2]])
