"""A one-shot timer that can be re-armed cheaply: one thread for its whole life.

Used where a deadline is set far more often than it fires (every database statement, every
file event), so that setting one costs a lock, not a new thread, and most of the time does
not even wake the timer's thread: it is woken only for a deadline earlier than the one it
already waits for, since on waking it looks at the latest deadline anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class DeadlineTimer:
    """Calls ``expire()`` once the armed deadline passes; arming again moves the deadline."""

    def __init__(self, expire: Callable[[], None], name: str) -> None:
        self._expire = expire
        self._name = name
        self._due: float | None = None
        # When the watching thread wakes by itself; None while it waits to be woken.
        self._wakes_at: float | None = None
        self._interval = 0.0  # the last deadline's length
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> None:
        with self._cond:
            due = self._due = time.monotonic() + seconds
            self._interval = seconds
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._watch, daemon=True,
                                                name=self._name)
                self._thread.start()
            if self._wakes_at is None or due < self._wakes_at:
                self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._due = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._due = None
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                if self._due is None:
                    if self._interval > 0:
                        # Disarmed, but likely armed again soon, with about the same length:
                        # waking by itself then spares waking it at every arming.
                        self._wakes_at = time.monotonic() + self._interval
                        self._cond.wait(self._interval)
                    else:
                        self._wakes_at = None
                        self._cond.wait()
                    continue
                left = self._due - time.monotonic()
                if left > 0:
                    self._wakes_at = self._due
                    self._cond.wait(left)
                    continue
                self._wakes_at = None
                self._due = None
                self._cond.release()  # never call out while holding the lock
                try:
                    self._expire()
                except Exception:
                    log.exception("%s: the deadline's action failed", self._name)
                finally:
                    self._cond.acquire()
