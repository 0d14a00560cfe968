"""The re-armable deadline timer used for database statements and file events."""

from __future__ import annotations

import threading
import time

from uploader_core.deadline import DeadlineTimer


class CountingCondition(threading.Condition):
    def __init__(self) -> None:
        super().__init__()
        self.notified = 0

    def notify(self, n: int = 1) -> None:
        self.notified += 1
        super().notify(n)


def test_an_armed_deadline_fires_once_and_a_disarmed_one_never() -> None:
    fired: list[float] = []
    timer = DeadlineTimer(lambda: fired.append(time.monotonic()), "test-deadline")
    try:
        timer.arm(0.05)
        timer.disarm()
        time.sleep(0.15)
        assert fired == []
        armed = time.monotonic()
        timer.arm(0.05)
        time.sleep(0.3)
        assert len(fired) == 1 and fired[0] - armed >= 0.05
    finally:
        timer.close()


def test_an_earlier_deadline_wakes_the_timer_waiting_for_a_later_one() -> None:
    fired = threading.Event()
    timer = DeadlineTimer(fired.set, "test-deadline")
    try:
        timer.arm(60)
        time.sleep(0.05)  # the timer now waits for a minute
        timer.arm(0.05)
        assert fired.wait(2)
    finally:
        timer.close()


def test_re_arming_statement_after_statement_does_not_wake_the_timer_each_time() -> None:
    fired: list[float] = []
    timer = DeadlineTimer(lambda: fired.append(time.monotonic()), "test-deadline")
    counting = CountingCondition()
    timer._cond = counting  # before the thread starts: it waits on this one
    try:
        timer.arm(30)
        timer.disarm()
        time.sleep(0.1)  # the thread has started and waits for that first deadline
        before = counting.notified
        for _ in range(200):
            timer.arm(30)
            timer.disarm()
        time.sleep(0.05)
        # Each later deadline comes after the one it waits for: it is looked at when the
        # thread wakes by itself.
        assert counting.notified == before
        assert fired == []
    finally:
        timer.close()
