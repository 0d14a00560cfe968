"""Work of a worker's that runs on one thread beside it, item after item, in order.

A worker would otherwise wait for each job's transfer before recording the next job, and for
each job's archive moves (renames and directory fsyncs) before going on. A :class:`SideThread`
runs one kind of that work (each worker keeps one for transfers and one for archive moves)
while the worker's thread goes on. That thread (the engine's, with one worker) hands items
over, collects each outcome in the order it handed them over, and does everything else
(hooks, monitor, logs, retry bookkeeping) itself.

A crash while an item runs here is the same as a crash while the worker's thread ran it: the
calls are the same, and the next pass finishes what they left.

A side thread made with :meth:`SideThread.batched` runs the items waiting in one call, and when
it finds fewer than it could take, it waits a little (``linger``) for more, unless the thread
that hands them over is waiting for an outcome. The archiver is made so: the moves of the jobs
completed meanwhile share their directory fsyncs, which cost far more than the renames.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Finished(Generic[T, R]):
    """The outcome of one item: what ``run(item)`` returned, or what it raised."""

    item: T
    value: R | None
    error: BaseException | None
    finished: float  # time.monotonic() when run(item) returned or raised


class SideThread(Generic[T, R]):
    """Runs ``run(item)`` for each item handed over, in order, on one thread (or ``run(items)``
    for a few at a time: :meth:`batched`).

    At most ``limit`` items wait or run at a time; :meth:`submit` blocks beyond that, so a slow
    archive disk slows the engine down instead of piling up work. The thread starts with the
    first item and ends with :meth:`close`. One thread (the engine's) hands items over,
    collects and closes.
    """

    def __init__(self, run: Callable[[T], R], *, name: str, limit: int = 1) -> None:
        self._setup(lambda items: [run(items[0])], name, limit, batch=1, linger=0.0)

    @classmethod
    def batched(cls, run: Callable[[list[T]], Sequence[R | BaseException]], *, name: str,
                limit: int, linger: float = 0.0) -> SideThread[T, R]:
        """A side thread that calls ``run`` with all the items waiting, ``limit`` at most.

        With fewer, it first waits up to ``linger`` seconds for more, and stops waiting as soon
        as :meth:`next_done` waits or :meth:`close` is called. ``run`` returns one outcome per
        item, in order: the item's value, or the exception the item failed with. An exception
        that ``run`` raises is every item's outcome.
        """
        side = cls.__new__(cls)
        side._setup(run, name, limit, batch=limit, linger=linger)
        return side

    def _setup(self, run: Callable[[list[T]], Sequence[R | BaseException]], name: str,
               limit: int, *, batch: int, linger: float) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self._run_items = run
        self._batch = batch
        self._linger = linger
        self._limit = limit
        self._name = name
        self._cond = threading.Condition()
        self._queued: deque[T] = deque()  # the first ones are running
        self._done: deque[Finished[T, R]] = deque()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._awaited = False  # next_done is waiting: no lingering

    def __len__(self) -> int:
        """Items handed over whose outcome has not been collected."""
        with self._cond:
            return len(self._queued) + len(self._done)

    def submit(self, item: T) -> None:
        """Hand ``item`` over; waits while ``limit`` items are still waiting or running."""
        with self._cond:
            while len(self._queued) >= self._limit:
                self._cond.wait()
            self._queued.append(item)
            # A lingering thread wakes by itself; woken for every item, it would cost about
            # what lingering saves.
            wake = not self._linger or len(self._queued) in (1, self._batch)
            if self._thread is None:
                self._closing = False
                # A daemon, so that an engine thread that dies without closing cannot keep the
                # process alive; work cut short at exit is a crash the next pass recovers from.
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            if wake:
                self._cond.notify_all()

    def next_done(self, *, wait: bool = False) -> Finished[T, R] | None:
        """The oldest outcome not collected yet, or None when there is none.

        Outcomes come in the order the items were handed over. Without ``wait``, an item still
        waiting or running gives None; with it, this waits for that item to end.
        """
        with self._cond:
            while wait and not self._done and self._queued:
                if not self._awaited:
                    self._awaited = True
                    self._cond.notify_all()
                self._cond.wait()
            self._awaited = False
            return self._done.popleft() if self._done else None

    def close(self) -> None:
        """Let the items handed over run, then end the thread; their outcomes stay."""
        with self._cond:
            thread = self._thread
            self._closing = True
            self._cond.notify_all()
        if thread is not None:
            thread.join()
        with self._cond:
            self._thread = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queued and not self._closing:
                    self._cond.wait()
                if not self._queued:
                    return
                until = time.monotonic() + self._linger
                while (len(self._queued) < self._batch and not self._closing
                       and not self._awaited and (left := until - time.monotonic()) > 0):
                    self._cond.wait(left)
                # They stay queued while they run: they count against the limit.
                items = list(islice(self._queued, self._batch))
            outcomes: Sequence[R | BaseException]
            try:
                outcomes = self._run_items(items)
                if len(outcomes) != len(items):
                    raise RuntimeError(f"{self._name}: {len(outcomes)} outcomes for "
                                       f"{len(items)} items")
            except BaseException as exc:
                # Handed back, never lost with this thread: the engine waits for every item.
                outcomes = [exc] * len(items)
            now = time.monotonic()
            with self._cond:
                for item, outcome in zip(items, outcomes, strict=True):
                    self._queued.popleft()
                    if isinstance(outcome, BaseException):
                        self._done.append(Finished(item, None, outcome, now))
                    else:
                        self._done.append(Finished(item, outcome, None, now))
                self._cond.notify_all()
