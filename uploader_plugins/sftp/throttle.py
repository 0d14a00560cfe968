"""The bandwidth cap: paces the bytes of uploads to a rate that can change at any moment.

A token bucket kept as one number, the time at which the bytes already charged have been
paid for (``_paid_until``). Charging ``n`` bytes moves it on by ``n / rate``; a writer that is
ahead of it sleeps until it is reached. Credit for an idle link is capped at ``BURST_SECONDS``,
so a cap is a cap even right after a pause.

Why it is written this way:

- No busy waiting: a writer that is ahead sleeps on a condition variable for the whole
  deficit, in one wait. Small deficits (under ``MIN_SLEEP_SECONDS``) are carried over instead
  of slept, so that at high rates the writer sleeps tens of times a second, not per write.
- A new rate (a reloaded configuration) or an interrupt wakes a sleeping writer at once: at a
  low cap one write can stand for seconds of sleep, which must not delay either.
- Unlimited costs nothing: callers test :attr:`RateLimiter.rate` (a plain attribute) and skip
  the limiter entirely when it is 0.
"""

from __future__ import annotations

import threading
import time

# Idle credit: at most this many seconds' worth of bytes go out without pacing.
BURST_SECONDS = 0.1
# Deficits shorter than this are carried over to the next write instead of slept.
MIN_SLEEP_SECONDS = 0.01


class RateLimiter:
    """Paces writes to :attr:`rate` bytes per second (0: no limit); one per plugin.

    :meth:`pace` is called by the engine's thread; :meth:`set_rate` and :meth:`wake` may be
    called from any thread.
    """

    def __init__(self, bytes_per_second: float = 0.0) -> None:
        self.rate = max(0.0, bytes_per_second)
        self._paid_until = 0.0
        self._changes = 0  # counts set_rate and wake calls: a sleeper compares it
        self._condition = threading.Condition(threading.Lock())

    def set_rate(self, bytes_per_second: float) -> None:
        """Use ``bytes_per_second`` from the next write on; wakes a writer that sleeps."""
        rate = max(0.0, bytes_per_second)
        with self._condition:
            if rate == self.rate:
                return
            self.rate = rate
            # The debt was counted at the old rate: start afresh at the new one.
            self._paid_until = time.monotonic()
            self._changes += 1
            self._condition.notify_all()

    def wake(self) -> None:
        """Make a sleeping writer return now (the engine is stopping)."""
        with self._condition:
            self._changes += 1
            self._condition.notify_all()

    def pace(self, nbytes: int) -> None:
        """Charge ``nbytes`` about to be written; first sleep while the writer is ahead.

        Returns early when the rate changes or :meth:`wake` is called; the caller checks
        whether it should stop.
        """
        with self._condition:
            rate = self.rate
            if rate <= 0:
                return
            now = time.monotonic()
            start = max(self._paid_until, now - BURST_SECONDS)
            self._paid_until = start + nbytes / rate
            wait = start - now
            if wait < MIN_SLEEP_SECONDS:
                return
            changes = self._changes
            self._condition.wait_for(lambda: self._changes != changes, timeout=wait)
