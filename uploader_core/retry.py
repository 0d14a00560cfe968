"""When to try again: exponential backoff per job and per endpoint."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt ``n + 1`` after ``n`` consecutive failures, with +-20 % jitter.

    Jitter keeps a fleet of devices that lost the same server from reconnecting in lockstep.
    """

    initial: float
    maximum: float

    def delay(self, failures: int) -> float:
        if failures <= 0 or self.initial <= 0:
            return 0.0
        base: float = min(self.maximum, self.initial * 2.0 ** min(failures - 1, 30))
        return base * random.uniform(0.8, 1.2)


@dataclass
class RetrySchedule:
    """Consecutive failures and the earliest next attempt, per key (event id or endpoint)."""

    backoff: Backoff
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, int] = field(default_factory=dict)
    _not_before: dict[str, float] = field(default_factory=dict)

    def failed(self, key: str) -> float:
        """Record a failure; return the delay until the next attempt."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = self.backoff.delay(failures)
        self._not_before[key] = self.clock() + delay
        return delay

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
        self._not_before.pop(key, None)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    def wait_left(self, key: str) -> float:
        """Seconds until ``key`` may be tried again; 0 when it may be tried now."""
        return max(0.0, self._not_before.get(key, 0.0) - self.clock())

    def forget(self, key: str) -> None:
        self.succeeded(key)
