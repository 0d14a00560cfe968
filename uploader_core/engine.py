"""The scan/transaction engine: ``DataUploader``.

One job is one event package. Its phases run strictly in order, each idempotent, so that a
crash or a failure at any point leaves a state from which the next pass finishes the job
exactly once:

1. ``store_metadata``: upsert the record (pending), never a second row.
2. ``transfer_files``: video, then JSON, each under a temporary name renamed into place.
3. ``mark_completed``: the record says where the files are.
4. archive: the video, then the JSON, move into ``uploaded_dir``. The JSON goes last because
   it is the trigger: while it is still pending, the job will be seen again.

A worker takes jobs one at a time through each phase, but neighbouring jobs overlap
(:mod:`uploader_core.side_thread`): while one job's files go out on the worker's transfer
thread, the worker records the next job and completes the one before, and its archiver thread
moves the files of the ones before that. It moves together the jobs completed within 50 ms
of each other while the pass goes on, so that they share their directory fsyncs; each job's
video is still durable in the archive before its JSON moves. Hooks, monitor events and logs
stay on the worker's thread, except ``transfer_files`` itself, and a pass returns only once
all of its work is done. With one worker (the default) the engine's own thread is the worker;
with several, each runs on a thread of its own with plugin instances of its own, and they
take the pass's jobs in order of age.

The engine knows nothing of PostgreSQL or SFTP; plugins do that work through the hooks in
:mod:`uploader_core.hookspecs`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import filing, signals
from .config import disabled_plugins, validate
from .errors import (
    ConfigurationError,
    EndpointUnavailable,
    Interrupted,
    PermanentJobError,
    TransientError,
    UploaderError,
)
from .job import (
    Job,
    JobResult,
    Outcome,
    Phase,
    RecordState,
    TransferReceipt,
    UpcomingJob,
    nothing_upcoming,
)
from .monitor import EngineState, Monitor
from .package import (
    JSON_SUFFIX,
    VIDEO_SUFFIX,
    VideoMissing,
    check_event_id,
    read_package,
)
from .plugin_host import PluginHost
from .queue_lock import QueueLock
from .retention import Retention
from .retry import Backoff, RetrySchedule
from .scanner import Candidate, SettleTracker, scan
from .side_thread import Finished, SideThread
from .systemd import Notifier
from .watcher import PendingWatcher

log = logging.getLogger("uploader")

# The most jobs a worker's archiver moves in one go, sharing their directory fsyncs; also how
# many completed jobs may wait for it before the worker waits too.
_ARCHIVE_BATCH = 32
# How long the archiver waits for more jobs while the worker is busy: a directory fsync costs
# about 0.3 ms of CPU here and more on an SD card, and a backlog completes a job every few ms.
_ARCHIVE_LINGER = 0.05


class _PassStopped(Exception):
    """Internal: the rest of this pass would only fail against the same endpoint."""


@dataclass
class _Recorded:
    """A job recorded pending (phase 1 done): ready for its transfer."""

    job: Job
    started: float  # time.monotonic() when the job was picked up
    progressed: bool = False  # bytes went out during its transfer


@dataclass(frozen=True)
class _ToArchive:
    """A job recorded completed, handed to the archiver."""

    job: Job
    started: float  # time.monotonic() when the job was picked up


@dataclass
class _Worker:
    """One worker: its plugin instances, and the threads its transfers and archive moves run
    on. Only the thread running the worker's jobs touches it (and the engine's, in ``close``)."""

    host: PluginHost
    archiver: SideThread[_ToArchive, bool]
    transfers: SideThread[_Recorded, list[TransferReceipt]] | None = None
    in_flight: _Recorded | None = None  # on the transfer thread
    upcoming: Job | None = None  # recorded, to be transferred once in_flight is done
    results: list[JobResult] | None = None  # of the pass under way
    number: int = 1


class DataUploader:
    """Uploads event packages from the pending directory; see the module docstring.

    ``config`` is the whole configuration dict; its ``uploader`` section is validated here,
    with every problem named by its key path. ``plugins`` registers extra plugin objects
    (name, object) before the entry points are loaded; ``load_entry_points=False`` builds an
    engine from ``plugins`` alone (as tests with in-memory plugins do).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        plugins: Iterable[tuple[str, object]] = (),
        load_entry_points: bool = True,
        reload_config: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self._reload_config = reload_config
        plugins_given = list(plugins)
        self._host = PluginHost()
        # Each worker has a plugin host with its own plugin instances, so its connections are
        # its own. The first worker's is self._host.
        hosts: list[PluginHost] = [self._host]
        self._local = threading.local()
        disabled = set(disabled_plugins(config))
        for name, plugin in plugins_given:
            if name not in disabled:
                self._host.register(plugin, name)
        if load_entry_points:
            self._host.load_entry_points(disabled)
        self.settings = validate(config, self._host.config_sections())
        if not self._host.implements("transfer_files"):
            raise ConfigurationError(
                "no plugin transfers files; the built-in 'sftp' plugin may be disabled",
                setting="uploader.plugins.disabled",
            )
        s = self.settings
        self.pending_dir = Path(s["pending_upload_dir"])
        self.uploaded_dir = Path(s["uploaded_dir"])
        self.failed_dir = Path(s["failed_dir"])
        self._job_retries = RetrySchedule(Backoff(0, 0))
        self._endpoint_retries = RetrySchedule(Backoff(0, 0))
        self._settle = SettleTracker(0)
        self._apply_core_settings(s)
        self._reported: dict[str, str] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()  # ends the sleep between passes early
        self._reload = threading.Event()
        self.systemd = Notifier()
        self._paused = threading.Event()
        self._blocked_by: UploaderError | None = None
        self._settling_seen = False
        self.monitor = Monitor()
        self._lock = QueueLock(self.pending_dir)
        for key in ("pending_upload_dir", "uploaded_dir", "failed_dir"):
            path = Path(s[key])
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigurationError(f"cannot create directory {path}: {exc.strerror}",
                                         setting=f"uploader.{key}") from exc
        self._host.configure(s)
        for _ in range(int(s["workers"]) - 1):
            host = PluginHost()
            for name, plugin in plugins_given:
                if name not in disabled:
                    host.register(plugin, name)
            if load_entry_points:
                host.load_entry_points(disabled)
            host.configure(s)
            hosts.append(host)
        self._workers = [self._new_worker(host, n) for n, host in enumerate(hosts, 1)]
        self._halted = threading.Event()  # a worker stopped the pass: the others take no job
        self.retention = Retention(s["retention"], self.uploaded_dir,
                                   confirm=self._host.confirm_completed,
                                   pending_dir=self.pending_dir, should_stop=self._stop.is_set)
        self._load_quarantined()

    def _new_worker(self, host: PluginHost, number: int) -> _Worker:
        suffix = "" if number == 1 else f"-{number}"
        archiver = SideThread.batched(self._archive_files, name=f"uploader-archiver{suffix}",
                                      limit=_ARCHIVE_BATCH, linger=_ARCHIVE_LINGER)
        worker = _Worker(host, archiver, number=number)
        if self._transfers_can_overlap():
            worker.transfers = SideThread(
                lambda recorded: self._transfer(recorded, host, lambda: worker.upcoming),
                name=f"uploader-transfer{suffix}")
        return worker

    # --- public API

    @property
    def plugin_names(self) -> list[str]:
        return self._host.names()

    def plugin(self, name: str) -> object | None:
        """The registered plugin object called ``name``, or None."""
        return self._host.get(name)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, handle_signals: bool = True) -> None:
        """The service loop: scan, process each job, sleep; until :meth:`request_stop`.

        SIGTERM and SIGINT request a stop, and SIGHUP a reload, when ``run`` is called from
        the main thread; ``handle_signals=False`` leaves that to a caller that routed the
        signals already (see :func:`uploader_core.signals.install`).
        """
        self.claim_queue()
        restore = (signals.install(self.request_stop, self.request_reload) if handle_signals
                   else (lambda: None))
        watcher = self._start_watcher()
        unsubscribe = self.monitor.subscribe(lambda event: self.systemd.ping())
        log.info("uploader started: watching %s (plugins: %s)", self.pending_dir,
                 ", ".join(self.plugin_names))
        self.systemd.ready("started")
        try:
            while not self._stop.is_set():
                # Cleared before the pass: a wake-up during the pass starts the next at once.
                self._wake.clear()
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                if not self._paused.is_set():
                    results = self.run_once()
                    self.systemd.status(self._status_line(results))
                    # Even while an endpoint is down: that is when the pending disk fills up.
                    report = None if self._stop.is_set() else self.retention.run_if_due()
                    if report is not None:
                        self.monitor.housekeeping(report.to_json())
                if self._stop.is_set():
                    break
                self.monitor.set_state(EngineState.PAUSED if self._paused.is_set()
                                       else EngineState.IDLE)
                self._sleep(self._next_delay())
        finally:
            self.systemd.stopping()
            self.monitor.set_state(EngineState.STOPPING)
            unsubscribe()
            if watcher is not None:
                watcher.close()
            restore()
            self.close()
            self.monitor.set_state(EngineState.STOPPED)
            log.info("uploader stopped")

    def _sleep(self, seconds: float) -> None:
        """Wait for the next pass, still telling systemd's watchdog that the loop is alive."""
        deadline = time.monotonic() + seconds
        step = self.systemd.watchdog_interval or seconds
        while not self._wake.is_set():
            self.systemd.ping()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(min(left, step / 2))

    def _start_watcher(self) -> PendingWatcher | None:
        if not self.settings["watch_pending_dir"]:
            return None
        watcher = PendingWatcher(self.pending_dir, self._settle.settle_seconds,
                                 self._files_settled)
        return watcher if watcher.start() else None

    def _status_line(self, results: list[JobResult]) -> str:
        counts = {o: 0 for o in Outcome}
        for r in results:
            counts[r.outcome] += 1
        status = (f"{counts[Outcome.COMPLETED]} uploaded, {counts[Outcome.RETRY]} to retry, "
                  f"{counts[Outcome.QUARANTINED]} quarantined, "
                  f"{counts[Outcome.WAITING]} not ready in the last pass")
        if self._blocked_by is not None:
            status += f"; {self._blocked_by}"
        return status[:400]

    # --- configuration reload

    def request_reload(self) -> None:
        """Re-read the configuration between passes (SIGHUP does this); thread-safe."""
        self._reload.set()
        self._wake.set()

    def reload(self) -> bool:
        """Apply a new configuration now; False, keeping the old one, if it is invalid.

        Directories and the set of plugins only change with a restart; everything else
        (intervals, timeouts, retry, log level, the plugins' own settings) takes effect here.
        """
        if self._reload_config is None:
            log.warning("reload requested, but this engine was not given a configuration "
                        "source; nothing changed")
            return False
        self.systemd.reloading()
        try:
            new = validate(self._reload_config(), self._host.config_sections())
            # The workers' plugin instances and threads are made when the engine is built.
            for key in ("pending_upload_dir", "uploaded_dir", "failed_dir", "plugins", "metrics",
                        "control", "workers", "cpu_affinity"):
                if new[key] != self.settings[key]:
                    log.warning("uploader.%s changed; it takes effect after a restart", key)
                    new[key] = self.settings[key]
            for worker in self._workers:
                worker.host.configure(new)
        except ConfigurationError as exc:
            log.error("configuration not reloaded, the old one stays in force: %s", exc)
            self.systemd.reloaded("reload failed; running with the old configuration")
            return False
        self._apply_core_settings(new)
        self.retention.reconfigure(new["retention"])
        if new["log_level"] != self.settings["log_level"]:
            logging.getLogger().setLevel(new["log_level"])
        self.settings = new
        log.info("configuration reloaded")
        self.systemd.reloaded("configuration reloaded")
        return True

    def _apply_core_settings(self, s: Mapping[str, Any]) -> None:
        self.scan_interval = float(s["scan_interval_seconds"])
        self.orphan_timeout = float(s["orphan_timeout_seconds"])
        self.max_metadata_bytes = int(s["max_metadata_bytes"])
        backoff = Backoff(s["retry"]["initial_backoff_seconds"], s["retry"]["max_backoff_seconds"])
        self._job_retries.backoff = backoff
        self._endpoint_retries.backoff = backoff
        self._settle.settle_seconds = float(s["settle_seconds"])

    def run_once(self) -> list[JobResult]:
        """One pass over the pending directory; what happened to each job seen."""
        self.claim_queue()
        self._blocked_by = None
        self._settling_seen = False
        results: list[JobResult] = []
        self.monitor.set_state(EngineState.RUNNING)
        try:
            candidates = scan(self.pending_dir)
        except OSError as exc:
            self._report("scan", logging.ERROR,
                         f"cannot read pending directory {self.pending_dir}: {exc.strerror}")
            return results
        self._settle.prune()
        self._halted.clear()
        self.monitor.pass_started(candidates)
        if len(self._workers) == 1:
            self._run_worker(self._workers[0], iter(candidates), results)
        else:
            self._run_in_parallel(candidates, results)
        counts = {o.value: 0 for o in Outcome}
        for r in results:
            counts[r.outcome.value] += 1
        self.monitor.pass_finished(counts)
        if self._blocked_by is None:
            for key in list(self._reported):
                if key.startswith("endpoint:"):
                    log.info("%s is reachable again", key.removeprefix("endpoint:"))
                    del self._reported[key]
            self._endpoint_retries.forget("endpoints")
        return results

    def _keep_going(self) -> bool:
        if self._stop.is_set() or self._paused.is_set() or self._halted.is_set():
            return False
        if self._reload.is_set():
            if not self._reload_between_jobs:
                return False  # the pass ends for it
            # Between jobs, so a new bandwidth cap or timeout does not wait for a backlog; not
            # during a transfer, so that no plugin is reconfigured while it works.
            self._settle_in_flight()
            self._reload_now()
        return True

    @property
    def _reload_between_jobs(self) -> bool:
        """Whether a reload asked for during a pass applies between a worker's jobs.

        Only with one worker: with several, another worker may be transferring, and no
        plugin is reconfigured while it works. The pass then ends once the jobs under way
        are done, and the reload applies then (:meth:`_run_in_parallel`).
        """
        return len(self._workers) == 1

    def _reload_now(self) -> None:
        """Apply the reload asked for during the pass (no transfer is under way)."""
        self._reload.clear()
        self.reload()

    def _run_worker(self, worker: _Worker, candidates: Iterator[Candidate],
                    results: list[JobResult]) -> None:
        """``worker`` takes jobs from ``candidates`` one at a time, each phase of a job after
        the one before it, until there are none or the pass stops.

        Neighbouring jobs overlap: one job's transfer runs beside the next job's record and
        the previous job's completion, and its archive moves beside the jobs after it.
        ``candidates`` may be shared with other workers (it is then safe to call from
        several threads); the results go to ``results`` in the order this worker started its
        jobs.
        """
        self._local.worker = worker
        worker.results = results
        try:
            while True:
                try:
                    self._collect_archives()
                    if not self._keep_going():
                        break
                    candidate = next(candidates, None)
                    if candidate is None:
                        break
                    result = self._process_candidate(candidate)
                    if result is not None:
                        # After the jobs handed over before it: results stay in the order the
                        # jobs started.
                        self._settle_in_flight()
                        self._collect_archives(wait=True)
                        results.append(result)
                except _PassStopped as stopped:
                    self._halted.set()
                    # The job under way was picked up first: its result comes first.
                    try:
                        self._settle_in_flight()
                    except _PassStopped as earlier:
                        results.append(earlier.args[0])
                    results.append(stopped.args[0])
                    break
        finally:
            try:
                try:
                    # Also when stopping: the transfer has been interrupted, and a move under
                    # way is quick, and finishing it is safer.
                    self._settle_in_flight()
                except _PassStopped as stopped:
                    self._halted.set()
                    results.append(stopped.args[0])
                self._collect_archives(wait=True)
            finally:
                worker.results = None
                self._local.worker = None
                for side in (worker.transfers, worker.archiver):
                    if side is not None:
                        side.close()

    def _run_in_parallel(self, candidates: list[Candidate], results: list[JobResult]) -> None:
        """Every worker on a thread of its own, taking the jobs in order of age.

        When one worker's job finds an endpoint down, no worker starts a new job in this pass.
        """
        lock = threading.Lock()
        pending = iter(candidates)

        def next_candidate() -> Iterator[Candidate]:
            while True:
                with lock:
                    candidate = next(pending, None)
                if candidate is None:
                    return
                yield candidate

        outcomes: list[list[JobResult]] = [[] for _ in self._workers]
        failures: list[BaseException] = []

        def work(worker: _Worker, into: list[JobResult]) -> None:
            try:
                self._run_worker(worker, next_candidate(), into)
            except BaseException as exc:
                # Handed to the engine's thread, which raises it as one worker's pass would.
                self._halted.set()
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(worker, into), daemon=True,
                                    name=f"uploader-worker-{worker.number}")
                   for worker, into in zip(self._workers, outcomes, strict=True)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        except BaseException:
            # Ctrl-C while waiting, or a thread that could not start: the workers finish the
            # jobs they have and take no more.
            self._halted.set()
            for thread in threads:
                if thread.ident is not None:
                    thread.join()
            raise
        for into in outcomes:
            results.extend(into)
        if failures:
            raise failures[0]
        if self._reload.is_set() and not self._stop.is_set():
            # Asked for during the pass, which ended for it once no worker was transferring.
            self._reload_now()

    @property
    def _worker(self) -> _Worker:
        """The worker whose job runs on this thread (the first outside a pass)."""
        worker: _Worker | None = getattr(self._local, "worker", None)
        return self._workers[0] if worker is None else worker

    @property
    def _lane(self) -> PluginHost:
        """The plugin host of the job on this thread."""
        return self._worker.host

    def claim_queue(self) -> None:
        """Take the pending directory for this engine alone (``run`` and ``run_once`` do).

        Raises :class:`QueueBusy`, naming the holder, when another engine has it.
        """
        self._lock.acquire()

    def request_stop(self) -> None:
        """Stop soon; thread-safe. A transfer in flight is abandoned and retried later."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        self.monitor.set_state(EngineState.STOPPING)
        for worker in self._workers:
            worker.host.interrupt()

    # --- commands, thread-safe: the control socket calls these

    def scan_now(self) -> None:
        """Start the next pass now instead of after the scan interval."""
        self._wake.set()

    def _files_settled(self) -> None:
        # New packages do not cut an endpoint's backoff short: they would only fail against
        # it too. An explicit scan_now() still does.
        if self._blocked_by is None:
            self._wake.set()

    def pause(self) -> None:
        """Start no new job until :meth:`resume`; a job under way finishes."""
        self._paused.set()
        self.monitor.set_state(EngineState.PAUSED)

    def resume(self) -> None:
        self._paused.clear()
        self._wake.set()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def retry_now(self, event_id: str) -> bool:
        """Forget the backoff of ``event_id`` and scan now; False if it is not pending."""
        check_event_id(event_id)
        if not (self.pending_dir / f"{event_id}{JSON_SUFFIX}").exists():
            return False
        self._job_retries.forget(event_id)
        self._endpoint_retries.forget("endpoints")
        self._wake.set()
        return True

    def requeue(self, event_id: str) -> list[str]:
        """Move a quarantined package back into the pending directory; the names moved.

        The error report is kept beside, renamed, as a record of the earlier failure.
        Raises :class:`PermanentJobError` for an id that is not valid, and
        :class:`FileNotFoundError` when nothing of that id is quarantined.
        """
        check_event_id(event_id)
        video = self.failed_dir / f"{event_id}{VIDEO_SUFFIX}"
        document = self.failed_dir / f"{event_id}{JSON_SUFFIX}"
        if not os.path.lexists(document):
            raise FileNotFoundError(f"no quarantined package {event_id} in {self.failed_dir}")
        report = self.failed_dir / f"{event_id}.error.json"
        if report.exists():
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            # Renamed first: a half-done requeue must not look like a half-done quarantine.
            os.rename(report, self.failed_dir / f"{event_id}.requeued-{stamp}.error.json")
        moved = []
        for path in (video, document):  # the trigger JSON last, as always
            if os.path.lexists(path):
                filing.move_into(path, self.pending_dir)
                moved.append(path.name)
        self._job_retries.forget(event_id)
        self.monitor.requeued(event_id)
        log.info("%s requeued from %s", event_id, self.failed_dir)
        self._wake.set()
        return moved

    def close(self) -> None:
        for worker in self._workers:
            self._local.worker = worker
            try:
                if worker.transfers is not None:
                    # Only left over when a pass ended in an exception: the transfer ends
                    # before its plugin shuts down, and the job, still recorded pending, is
                    # retried later.
                    worker.in_flight = None
                    worker.transfers.close()
                # Likewise; told before plugins shut down.
                self._collect_archives(wait=True)
                worker.archiver.close()
            finally:
                self._local.worker = None
        for worker in self._workers:
            worker.host.shutdown()
        self._lock.release()

    def init_storage(self) -> None:
        self._host.init_storage()

    def check(self) -> list[Any]:
        return self._host.check()

    def __enter__(self) -> DataUploader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one job

    def _process_candidate(self, c: Candidate) -> JobResult | None:
        """What became of the job; None when it vanished or when it went to the archiver."""
        stem = c.stem
        wait = self._job_retries.wait_left(stem)
        if wait > 0:
            return JobResult(event_id=stem, outcome=Outcome.WAITING,
                             reason=f"retrying in {wait:.0f} s")
        try:
            jst = os.lstat(c.json_path)
        except FileNotFoundError:
            return None
        settled = self._settle.settled(c.json_path, jst)
        video_st = None
        with contextlib.suppress(FileNotFoundError):
            video_st = os.lstat(c.video_path)
        if video_st is not None:
            settled = self._settle.settled(c.video_path, video_st) and settled
        if not settled:
            # Look again as soon as it can have settled, whether or not a file event says so.
            self._settling_seen = True
            return JobResult(event_id=stem, outcome=Outcome.WAITING, reason="settling")

        try:
            check_event_id(stem)
        except PermanentJobError as exc:
            return self._quarantine(stem, [c.video_path, c.json_path], exc, Phase.READ)

        if video_st is None:
            return self._video_missing(c, jst)
        try:
            job = read_package(c.json_path, c.video_path,
                               max_metadata_bytes=self.max_metadata_bytes)
        except FileNotFoundError:
            return None
        except VideoMissing:
            return JobResult(event_id=stem, outcome=Outcome.WAITING, reason="video missing")
        except PermanentJobError as exc:
            return self._quarantine(stem, [c.video_path, c.json_path], exc, Phase.READ)
        self._reported.pop(f"orphan:{stem}", None)
        return self._transact(job)

    def _transact(self, job: Job) -> JobResult | None:
        """Phases 1 to 4 of ``job``; None when its transfer or archive went to a side thread
        (the result comes to the pass when that work is collected)."""
        recorded = self._record(job)
        if not isinstance(recorded, _Recorded):
            return recorded
        if self._worker.transfers is not None:
            self._settle_in_flight(start=recorded)
            return None
        self.monitor.phase(job.event_id, Phase.TRANSFER.value)
        try:
            receipts = self._transfer(recorded, self._lane, nothing_upcoming)
        except Exception as exc:
            return self._transfer_failed(recorded, exc)
        return self._complete(recorded, receipts)

    def _record(self, job: Job) -> _Recorded | JobResult | None:
        """``pre_upload`` and phase 1; a job recorded pending is ready for its transfer."""
        started = time.monotonic()
        phase = Phase.PRE_UPLOAD
        enter = self.monitor.phase
        try:
            enter(job.event_id, phase.value)
            self._lane.pre_upload(job)
            self._check_stop()
            phase = Phase.STORE_METADATA
            enter(job.event_id, phase.value)
            states = self._lane.store_metadata(job)
            if not (states and all(s is RecordState.COMPLETED for s in states)):
                self._check_stop()
                return _Recorded(job, started)
        except Exception as exc:
            return self._failed(job.event_id, phase, exc, [job.video_path, job.json_path])
        log.info("%s was already completed; archiving it", job.event_id)
        return self._to_archive(job, started)

    def _complete(self, recorded: _Recorded, receipts: list[TransferReceipt]) -> JobResult | None:
        """Phase 3 after a transfer that succeeded, then phase 4."""
        job = recorded.job
        phase = Phase.TRANSFER
        try:
            self._check_stop()
            phase = Phase.MARK_COMPLETED
            self.monitor.phase(job.event_id, phase.value)
            self._lane.mark_completed(job, receipts)
        except Exception as exc:
            return self._failed(job.event_id, phase, exc, [job.video_path, job.json_path])
        return self._to_archive(job, recorded.started)

    def _to_archive(self, job: Job, started: float) -> JobResult | None:
        self.monitor.phase(job.event_id, Phase.ARCHIVE.value)
        self._worker.archiver.submit(_ToArchive(job, started))
        return None

    # --- transfers on each worker's transfer thread

    def _transfers_can_overlap(self) -> bool:
        """Whether a transfer may run beside its worker's other phases.

        Only when no plugin that transfers files also takes part in those phases, so that no
        plugin object is ever called from two threads at once. ``post_quarantine`` waits for
        the transfer under way instead (:meth:`_quarantine`), and so does a reload.
        """
        transferring = self._host.plugins_implementing("transfer_files")
        return not any(transferring & self._host.plugins_implementing(hook)
                       for hook in ("pre_upload", "store_metadata", "mark_completed",
                                    "post_archive"))

    def _settle_in_flight(self, start: _Recorded | None = None) -> None:
        """Wait for the transfer under way and complete its job; then start ``start``'s.

        A transfer that failed is dealt with before the next one starts, since its failure
        can stop the pass; one that succeeded is completed while the next one runs. Raises
        :class:`_PassStopped` as the job's own phases would; ``start`` then gets a result
        saying it was not transferred.
        """
        worker = self._worker
        transfers = worker.transfers
        previous, worker.in_flight = worker.in_flight, None
        done: Finished[_Recorded, list[TransferReceipt]] | None = None
        if previous is not None and transfers is not None:
            # The transfer under way may start on the next job while it ends.
            worker.upcoming = None if start is None else start.job
            try:
                done = transfers.next_done(wait=True)
            finally:
                worker.upcoming = None
        if previous is not None and done is not None and done.error is not None:
            try:
                self._add_result(self._after_transfer(previous, done))
            except _PassStopped as stopped:
                if start is None:
                    raise
                self._add_result(stopped.args[0])
                raise _PassStopped(self._not_transferred(start, "the pass stopped")) from stopped
        if start is not None and transfers is not None:
            if self._reload.is_set() and self._reload_between_jobs:
                # Asked for since this job was recorded: it applies from this transfer on.
                self._reload_now()
            self.monitor.phase(start.job.event_id, Phase.TRANSFER.value)
            worker.in_flight = start
            transfers.submit(start)
        if previous is not None and done is not None and done.error is None:
            self._add_result(self._after_transfer(previous, done))

    def _after_transfer(self, recorded: _Recorded,
                        done: Finished[_Recorded, list[TransferReceipt]]) -> JobResult | None:
        if done.error is None:
            assert done.value is not None
            return self._complete(recorded, done.value)
        if not isinstance(done.error, Exception):
            raise done.error  # KeyboardInterrupt and the like end the pass as they would inline
        return self._transfer_failed(recorded, done.error)

    def _transfer_failed(self, recorded: _Recorded, exc: Exception) -> JobResult:
        job = recorded.job
        return self._failed(job.event_id, Phase.TRANSFER, exc, [job.video_path, job.json_path],
                            progressed=recorded.progressed)

    def _not_transferred(self, recorded: _Recorded, why: str) -> JobResult:
        """A job recorded pending whose transfer never started: it is tried again later."""
        reason = f"not transferred: {why}"
        self.monitor.retry(recorded.job.event_id, Phase.TRANSFER.value, reason)
        return JobResult(event_id=recorded.job.event_id, outcome=Outcome.RETRY,
                         phase=Phase.TRANSFER, reason=reason)

    def _add_result(self, result: JobResult | None) -> None:
        results = self._worker.results
        if result is not None and results is not None:
            results.append(result)

    def _transfer(self, recorded: _Recorded, host: PluginHost,
                  upcoming: UpcomingJob) -> list[TransferReceipt]:
        """Phase 2 with ``host``'s plugins, and a check that the video did not change
        meanwhile; on a worker's transfer thread, so it touches no engine state but the
        monitor."""
        job = recorded.job

        def progress(done: int, total: int) -> None:
            if self._stop.is_set():
                raise Interrupted(f"transfer of {job.event_id} abandoned: the uploader is stopping")
            recorded.progressed = True
            self.monitor.progress(job.event_id, done, total)

        self.monitor.transfer_started(job.event_id, job.video_size + job.json_size)
        receipts = host.transfer_files(job, progress, upcoming)
        if not receipts:
            raise ConfigurationError("no plugin returned a transfer receipt for "
                                     f"{job.event_id}; is a transfer plugin enabled?")
        try:
            st = os.lstat(job.video_path)
        except FileNotFoundError as exc:
            raise TransientError(f"video {job.video_path.name} vanished during upload") from exc
        if st.st_size != job.video_size or st.st_mtime_ns != job.video_mtime_ns:
            raise TransientError(f"video {job.video_path.name} changed during upload; "
                                 "it will be uploaded again")
        return receipts

    def _archive_files(self, handed: list[_ToArchive]) -> list[bool | BaseException]:
        """Phase 4's moves of the jobs ``handed`` over, in one go; for each job, True when its
        JSON was gone and its uploaded bytes were written, or the OSError that stopped it.

        The videos move first and are made durable together, then the JSONs: each job's
        video is archived for good before its trigger leaves the pending directory, as when
        each job was moved on its own, and the jobs share two fsyncs per directory. Only files
        are touched here: the archiver thread runs this.
        """
        outcomes: list[bool | BaseException] = [False] * len(handed)
        syncs = filing.DirectorySyncs()
        for i, job in enumerate(h.job for h in handed):
            try:
                filing.move_into(job.video_path, self.uploaded_dir, syncs)
            except FileNotFoundError:
                # Only after a crash between the two moves or a hand-made change: the video
                # is already archived or gone; the record says the job is complete.
                pass
            except OSError as exc:
                outcomes[i] = exc
        syncs.flush()
        for i, job in enumerate(h.job for h in handed):
            if isinstance(outcomes[i], BaseException):
                continue
            try:
                outcomes[i] = self._archive_document(job, syncs)
            except OSError as exc:
                outcomes[i] = exc
        syncs.flush()
        return outcomes

    def _archive_document(self, job: Job, syncs: filing.DirectorySyncs) -> bool:
        try:
            filing.move_into(job.json_path, self.uploaded_dir, syncs)
        except FileNotFoundError:
            # Deleted while the job ran; its bytes were read and uploaded, so keep them.
            self._write_archived_document(job)
            return True
        return False

    def _archived(self, job: Job, rewritten: bool, duration: float) -> JobResult:
        """Everything after a successful archive; never on the archiver thread."""
        if rewritten:
            log.warning("%s was deleted from the pending directory during its upload; the "
                        "uploaded copy was written to the archive", job.json_path.name)
        self._job_retries.succeeded(job.event_id)
        self._forget_reports(job.event_id)
        log.info("%s uploaded and archived", job.event_id)
        self._endpoints_up()
        self.monitor.completed(job.event_id, job.video_size + job.json_size, duration)
        self._lane.post_archive(job)
        return JobResult(event_id=job.event_id, outcome=Outcome.COMPLETED)

    def _collect_archives(self, *, wait: bool = False) -> None:
        """Finish the jobs whose archive moves ended; with ``wait``, every job handed over.

        Their results go to the pass under way, in the order the jobs were handed over.
        """
        bug: BaseException | None = None
        while (done := self._worker.archiver.next_done(wait=wait)) is not None:
            job = done.item.job
            if isinstance(done.error, OSError):
                result = self._archive_failed(job, done.error)
            elif done.error is not None:
                # A bug: it ends the pass as it would inline, once the jobs moved with it are
                # told, so that no outcome is left over for the next pass.
                bug = bug or done.error
                continue
            else:
                result = self._archived(job, bool(done.value),
                                        done.finished - done.item.started)
            self._add_result(result)
        if bug is not None:
            raise bug

    def _write_archived_document(self, job: Job) -> None:
        dest = self.uploaded_dir / f"{job.event_id}{JSON_SUFFIX}"
        tmp = self.uploaded_dir / f".{job.event_id}{JSON_SUFFIX}.writing"
        with open(tmp, "wb") as out:
            out.write(job.document)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
        filing.fsync_dir(self.uploaded_dir)

    def _archive_failed(self, job: Job, exc: OSError) -> JobResult:
        delay = self._job_retries.failed(job.event_id)
        message = (f"{job.event_id} is uploaded and recorded, but moving it into "
                   f"{self.uploaded_dir} failed: {exc.strerror or exc}; the files stay in "
                   f"{self.pending_dir} and archiving is retried in {delay:.0f} s "
                   "(setting: uploader.uploaded_dir)")
        self._report(f"job:{job.event_id}", logging.ERROR, message)
        self.monitor.retry(job.event_id, Phase.ARCHIVE.value, message)
        return JobResult(event_id=job.event_id, outcome=Outcome.RETRY, phase=Phase.ARCHIVE,
                         reason=message)

    def _video_missing(self, c: Candidate, jst: os.stat_result) -> JobResult:
        stem = c.stem
        archived_video = self.uploaded_dir / f"{stem}{VIDEO_SUFFIX}"
        if os.path.lexists(archived_video):
            return self._finish_interrupted_archive(c, archived_video)
        failed_video = self.failed_dir / f"{stem}{VIDEO_SUFFIX}"
        if os.path.lexists(failed_video) and os.path.lexists(
            self.failed_dir / f"{stem}.error.json"
        ):
            # A quarantine was interrupted between its two moves: finish it.
            filing.move_into(c.json_path, self.failed_dir)
            return JobResult(event_id=stem, outcome=Outcome.QUARANTINED, phase=Phase.READ,
                             reason="finished an interrupted quarantine")
        age = time.time() - jst.st_mtime_ns / 1e9
        if age >= self.orphan_timeout:
            exc = PermanentJobError(
                f"video {stem}{VIDEO_SUFFIX} never appeared within "
                f"{self.orphan_timeout:.0f} s (uploader.orphan_timeout_seconds)"
            )
            return self._quarantine(stem, [c.json_path], exc, Phase.READ)
        key = f"orphan:{stem}"
        if key not in self._reported:
            self._report(key, logging.WARNING,
                         f"{c.json_path.name} has no video {stem}{VIDEO_SUFFIX} yet; waiting up "
                         f"to {self.orphan_timeout:.0f} s for it")
        return JobResult(event_id=stem, outcome=Outcome.WAITING, reason="video missing")

    def _finish_interrupted_archive(self, c: Candidate, archived_video: Path) -> JobResult:
        """The video is archived but its JSON is still pending: a crash between the moves."""
        try:
            job = read_package(c.json_path, archived_video,
                               max_metadata_bytes=self.max_metadata_bytes)
            states = self._lane.store_metadata(job)
        except FileNotFoundError:
            return JobResult(event_id=c.stem, outcome=Outcome.WAITING, reason="vanished")
        except Exception as exc:
            return self._failed(c.stem, Phase.ARCHIVE, exc, [c.json_path])
        if any(s is RecordState.PENDING for s in states):
            # The record does not confirm the upload: put the video back and upload again.
            filing.move_into(archived_video, self.pending_dir)
            log.warning("%s: its video was archived but its record is not completed; "
                        "uploading it again", c.stem)
            return JobResult(event_id=c.stem, outcome=Outcome.RETRY, phase=Phase.ARCHIVE,
                             reason="video returned to the pending directory")
        try:
            filing.move_into(c.json_path, self.uploaded_dir)
        except OSError as exc:
            return self._archive_failed(job, exc)
        log.info("%s: finished archiving after an interruption", c.stem)
        self._job_retries.succeeded(c.stem)
        return JobResult(event_id=c.stem, outcome=Outcome.COMPLETED, phase=Phase.ARCHIVE)

    # --- failures

    def _failed(self, stem: str, phase: Phase, exc: BaseException,
                files: list[Path], *, progressed: bool = False) -> JobResult:
        # The jobs before this one are told first, as when they were archived inline: an
        # archive collected later would mark the endpoint that just failed as up again.
        self._collect_archives(wait=True)
        if isinstance(exc, PermanentJobError):
            return self._quarantine(stem, files, exc, phase)
        self.monitor.retry(stem, phase.value, str(exc))
        if isinstance(exc, Interrupted) or (self._stop.is_set()
                                            and isinstance(exc, TransientError)):
            log.info("%s: %s", stem, exc)
            raise _PassStopped(JobResult(event_id=stem, outcome=Outcome.RETRY, phase=phase,
                                         reason=str(exc)))
        if isinstance(exc, (EndpointUnavailable, ConfigurationError)):
            self._blocked_by = exc
            if phase is Phase.TRANSFER and progressed:
                # A link that breaks every few megabytes still makes progress (uploads
                # resume): retry soon rather than backing off further each time.
                self._endpoint_retries.forget("endpoints")
            delay = self._endpoint_retries.failed("endpoints")
            endpoint = exc.endpoint or "an endpoint"
            self.monitor.endpoint(exc.endpoint or "endpoint", False, str(exc))
            kind = ("needs attention" if isinstance(exc, ConfigurationError)
                    else "is unavailable")
            self._report(f"endpoint:{endpoint}", logging.ERROR,
                         f"{endpoint} {kind} during {phase.value} of {stem}: {exc}; the pass "
                         f"stops and resumes in {max(delay, self.scan_interval):.0f} s",
                         gist=f"{endpoint} {kind}: {exc}")
            raise _PassStopped(JobResult(event_id=stem, outcome=Outcome.RETRY, phase=phase,
                                         reason=str(exc)))
        delay = self._job_retries.failed(stem)
        if isinstance(exc, TransientError):
            self._report(f"job:{stem}", logging.WARNING,
                         f"{stem}: {phase.value} failed: {exc}; retrying in {delay:.0f} s")
        else:
            # A plugin bug must never cost the job: log it loudly and retry.
            log.error("%s: unexpected error in %s; retrying in %.0f s", stem, phase.value,
                      delay, exc_info=exc)
        return JobResult(event_id=stem, outcome=Outcome.RETRY, phase=phase, reason=str(exc))

    def _quarantine(self, stem: str, files: list[Path], exc: UploaderError,
                    phase: Phase) -> JobResult:
        # The jobs before this one are told first, and post_quarantine never comes while the
        # plugin that implements it may be transferring.
        self._settle_in_flight()
        self._collect_archives(wait=True)
        reason = str(exc)
        try:
            filing.quarantine(self.failed_dir, stem, files, reason, {"phase": phase.value})
        except OSError as err:
            delay = self._job_retries.failed(stem)
            self._report(f"job:{stem}", logging.ERROR,
                         f"{stem} cannot be uploaded ({reason}) and moving it to "
                         f"{self.failed_dir} failed: {err.strerror or err}; it stays pending, "
                         f"retried in {delay:.0f} s (setting: uploader.failed_dir)")
            self.monitor.retry(stem, phase.value, reason)
            return JobResult(event_id=stem, outcome=Outcome.RETRY, phase=phase, reason=reason)
        log.error("%s quarantined in %s: %s", stem, self.failed_dir, reason)
        self.monitor.quarantined(stem, phase.value, reason)
        self._lane.post_quarantine(stem, reason)
        self._job_retries.succeeded(stem)
        self._forget_reports(stem)
        return JobResult(event_id=stem, outcome=Outcome.QUARANTINED, phase=phase, reason=reason)

    # --- helpers

    def _endpoints_up(self) -> None:
        for name in self.monitor.endpoints_down():
            self.monitor.endpoint(name, True)

    def _load_quarantined(self) -> None:
        """Tell the monitor about packages quarantined before this start (newest 1000)."""
        try:
            reports = sorted(self.failed_dir.glob("*.error.json"),
                             key=lambda p: p.stat().st_mtime)[-1000:]
        except OSError:
            return
        for path in reports:
            if ".requeued-" in path.name:
                continue
            try:
                report = json.loads(path.read_text(encoding="utf-8"))
                self.monitor.quarantined(str(report["event_id"]), str(report.get("phase", "")),
                                         str(report["reason"]), when=path.stat().st_mtime,
                                         publish=False)
            except (OSError, ValueError, KeyError, TypeError):
                continue

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Interrupted("the uploader is stopping")

    def _report(self, key: str, level: int, message: str, *, gist: str | None = None) -> None:
        """Log ``message`` once; a repeat under ``key`` goes to debug.

        A repeat is judged by ``gist`` when given: the part of the message that is not a
        countdown, so a growing backoff does not make the same outage look new.
        """
        gist = message if gist is None else gist
        if self._reported.get(key) == gist:
            log.debug("%s", message)
            return
        self._reported[key] = gist
        log.log(level, "%s", message)

    def _forget_reports(self, stem: str) -> None:
        self._reported.pop(f"job:{stem}", None)
        self._reported.pop(f"orphan:{stem}", None)

    def _next_delay(self) -> float:
        if self._blocked_by is not None:
            return max(self.scan_interval, self._endpoint_retries.wait_left("endpoints"))
        if self._settling_seen:
            return min(self.scan_interval, self._settle.settle_seconds + 0.05)
        return self.scan_interval
