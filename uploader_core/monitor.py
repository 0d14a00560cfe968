"""What the engine is doing, kept for the control socket, ``uploader status`` and metrics.

The engine reports to a :class:`Monitor`; readers take a :meth:`Monitor.snapshot` or
:meth:`Monitor.subscribe` to a stream of :class:`Event`. Everything here is thread-safe and
cheap for the engine: a slow subscriber must never slow an upload down, so callbacks are
expected to hand events off (to a queue) rather than do work, and progress events are thinned
to a few per second.
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.2  # seconds between progress events of one transfer
HISTORY_PER_JOB = 20
JOBS_REMEMBERED = 2000
RECENT_UPLOADS = 200
# A backlog after a week offline can hold 100,000 packages: a snapshot lists the oldest this
# many (``pending_count`` says how many there are) unless asked for another limit; ``None``
# asks for all of them.
DEFAULT_PENDING_LIMIT = 10_000


class EventKind(str, enum.Enum):
    STATE = "state"  # engine state changed: data = {"state": ...}
    PASS_STARTED = "pass_started"
    PASS_FINISHED = "pass_finished"  # data = counts by outcome
    PHASE = "phase"  # a job entered a phase: data = {"phase": ...}
    PROGRESS = "progress"  # data = {"done", "total", "rate"}
    COMPLETED = "completed"
    RETRY = "retry"  # data = {"phase", "reason"}
    QUARANTINED = "quarantined"  # data = {"phase", "reason"}
    ENDPOINT = "endpoint"  # data = {"endpoint", "up", "reason"}
    REQUEUED = "requeued"
    HOUSEKEEPING = "housekeeping"  # archive retention ran: data = its report


class EngineState(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"  # a pass is under way
    IDLE = "idle"  # sleeping until the next pass
    PAUSED = "paused"  # no new jobs are started until resumed
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Event:
    kind: EventKind
    time: float
    event_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "time": self.time, "event_id": self.event_id,
                **self.data}


@dataclass
class Transfer:
    event_id: str
    total: int
    started: float
    done: int = 0
    last_event: float = 0.0

    def to_json(self, now: float) -> dict[str, Any]:
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else None
        return {"event_id": self.event_id, "done": self.done, "total": self.total,
                "rate": rate, "eta": eta, "started": self.started}


class PendingEntry(Protocol):
    """What the monitor lists for a job waiting in the pending directory."""

    @property
    def event_id(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def since(self) -> float: ...  # the JSON's mtime


@dataclass(frozen=True, slots=True)
class PendingJob:
    """A plain :class:`PendingEntry` (the engine hands over its scan results directly)."""

    event_id: str
    size: int
    since: float


class Monitor:
    """Shared, thread-safe view of the engine. Filled by the engine, read by anyone."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._subscribers: dict[int, Callable[[Event], None]] = {}
        self._ids = itertools.count()
        self.state = EngineState.STARTING
        self._pending: dict[str, PendingEntry] = {}
        self._history: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        self._attempts: dict[str, int] = {}
        self._last_error: dict[str, str] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_UPLOADS)
        self._quarantined: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._endpoints: dict[str, dict[str, Any]] = {}
        self._transfer: Transfer | None = None
        self._last_pass: dict[str, Any] | None = None
        self._disk: dict[str, Any] = {}
        self.totals = {"completed": 0, "quarantined": 0, "retries": 0, "bytes_sent": 0}

    # --- subscribers
    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns the unsubscriber."""
        key = next(self._ids)
        with self._lock:
            self._subscribers[key] = callback

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.pop(key, None)

        return unsubscribe

    def _publish(self, kind: EventKind, event_id: str | None = None, /, **data: Any) -> None:
        event = Event(kind, self._clock(), event_id, data)
        with self._lock:
            subscribers = list(self._subscribers.values())
        for callback in subscribers:
            try:
                callback(event)
            except Exception:
                log.exception("a monitor subscriber failed")

    def _remember(self, event_id: str, entry: dict[str, Any]) -> None:
        # Caller holds the lock.
        history = self._history.get(event_id)
        if history is None:
            history = self._history[event_id] = deque(maxlen=HISTORY_PER_JOB)
            while len(self._history) > JOBS_REMEMBERED:
                self._history.popitem(last=False)
        else:
            self._history.move_to_end(event_id)
        history.append(entry)

    # --- reports from the engine
    def set_state(self, state: EngineState) -> None:
        with self._lock:
            if self.state is state:
                return
            self.state = state
        self._publish(EventKind.STATE, state=state.value)

    def pass_started(self, pending: Iterable[PendingEntry]) -> None:
        """``pending`` in the order to show them (oldest first); kept as given, not copied."""
        with self._lock:
            self._pending = {p.event_id: p for p in pending}
        self._publish(EventKind.PASS_STARTED, pending=len(self._pending))

    def pass_finished(self, counts: dict[str, int]) -> None:
        with self._lock:
            self._last_pass = {"finished": self._clock(), **counts}
        self._publish(EventKind.PASS_FINISHED, **counts)

    def phase(self, event_id: str, phase: str) -> None:
        self._publish(EventKind.PHASE, event_id, phase=phase)

    def transfer_started(self, event_id: str, total: int) -> None:
        with self._lock:
            self._transfer = Transfer(event_id, total, self._clock())

    def progress(self, event_id: str, done: int, total: int) -> None:
        now = self._clock()
        with self._lock:
            transfer = self._transfer
            if transfer is None or transfer.event_id != event_id:
                transfer = self._transfer = Transfer(event_id, total, now)
            transfer.done, transfer.total = done, total
            if now - transfer.last_event < PROGRESS_INTERVAL and done < total:
                return
            transfer.last_event = now
            data = transfer.to_json(now)
        self._publish(EventKind.PROGRESS, event_id, done=done, total=total, rate=data["rate"],
                      eta=data["eta"])

    def _finish_transfer(self, event_id: str) -> None:
        if self._transfer is not None and self._transfer.event_id == event_id:
            self._transfer = None

    def completed(self, event_id: str, size: int, duration: float) -> None:
        now = self._clock()
        with self._lock:
            self._finish_transfer(event_id)
            self._pending.pop(event_id, None)
            self._last_error.pop(event_id, None)
            self._attempts.pop(event_id, None)
            self._quarantined.pop(event_id, None)
            self._recent.appendleft({"event_id": event_id, "time": now, "bytes": size,
                                     "duration": duration})
            self._remember(event_id, {"time": now, "outcome": "completed"})
            self.totals["completed"] += 1
            self.totals["bytes_sent"] += size
        self._publish(EventKind.COMPLETED, event_id, bytes=size, duration=duration)

    def retry(self, event_id: str, phase: str, reason: str) -> None:
        now = self._clock()
        with self._lock:
            self._finish_transfer(event_id)
            self._attempts[event_id] = self._attempts.get(event_id, 0) + 1
            self._last_error[event_id] = reason
            self._remember(event_id, {"time": now, "outcome": "retry", "phase": phase,
                                      "reason": reason})
            self.totals["retries"] += 1
        self._publish(EventKind.RETRY, event_id, phase=phase, reason=reason)

    def quarantined(self, event_id: str, phase: str, reason: str,
                    when: float | None = None, publish: bool = True) -> None:
        now = self._clock() if when is None else when
        with self._lock:
            self._finish_transfer(event_id)
            self._pending.pop(event_id, None)
            self._quarantined[event_id] = {"event_id": event_id, "time": now, "phase": phase,
                                           "reason": reason}
            self._quarantined.move_to_end(event_id)
            while len(self._quarantined) > JOBS_REMEMBERED:
                self._quarantined.popitem(last=False)
            if publish:
                self._remember(event_id, {"time": now, "outcome": "quarantined",
                                          "phase": phase, "reason": reason})
                self.totals["quarantined"] += 1
        if publish:
            self._publish(EventKind.QUARANTINED, event_id, phase=phase, reason=reason)

    def requeued(self, event_id: str) -> None:
        with self._lock:
            self._quarantined.pop(event_id, None)
            self._remember(event_id, {"time": self._clock(), "outcome": "requeued"})
        self._publish(EventKind.REQUEUED, event_id)

    def endpoint(self, name: str, up: bool, reason: str = "") -> None:
        with self._lock:
            previous = self._endpoints.get(name)
            if previous is not None and previous["up"] == up and previous["reason"] == reason:
                return
            self._endpoints[name] = {"up": up, "reason": reason, "since": self._clock()}
        self._publish(EventKind.ENDPOINT, endpoint=name, up=up, reason=reason)

    def housekeeping(self, report: dict[str, Any]) -> None:
        """What the last archive retention run found (free space) and did (deletions)."""
        with self._lock:
            self._disk = {"pending_free_bytes": report.get("pending_free_bytes"),
                          "low_space": bool(report.get("low_space"))}
        self._publish(EventKind.HOUSEKEEPING, **report)

    # --- readers
    def endpoints_down(self) -> list[str]:
        with self._lock:
            return [name for name, health in self._endpoints.items() if not health["up"]]

    def job(self, event_id: str) -> dict[str, Any]:
        """Everything known of one event: pending entry, attempts, last error, history."""
        with self._lock:
            pending = self._pending.get(event_id)
            return {
                "event_id": event_id,
                "pending": None if pending is None else {"size": pending.size,
                                                         "since": pending.since},
                "attempts": self._attempts.get(event_id, 0),
                "last_error": self._last_error.get(event_id),
                "quarantined": self._quarantined.get(event_id),
                "history": list(self._history.get(event_id, ())),
            }

    def snapshot(self, pending_limit: int | None = DEFAULT_PENDING_LIMIT) -> dict[str, Any]:
        """The whole picture as plain JSON-able data."""
        now = self._clock()
        with self._lock:
            # Already oldest first: the engine scans in that order.
            total_pending = len(self._pending)
            pending_jobs: Iterable[PendingEntry] = self._pending.values()
            if pending_limit is not None:
                pending_jobs = itertools.islice(pending_jobs, pending_limit)
            pending = [{"event_id": p.event_id, "size": p.size, "age": now - p.since,
                        "attempts": self._attempts.get(p.event_id, 0),
                        "last_error": self._last_error.get(p.event_id)}
                       for p in pending_jobs]
            return {
                "time": now,
                "state": self.state.value,
                "pending_count": total_pending,
                "pending": pending,
                "recent": list(self._recent),
                "quarantined": list(reversed(self._quarantined.values())),
                "endpoints": {k: dict(v) for k, v in self._endpoints.items()},
                "transfer": None if self._transfer is None else self._transfer.to_json(now),
                "last_pass": None if self._last_pass is None else dict(self._last_pass),
                "totals": dict(self.totals),
                "disk": dict(self._disk),
            }
