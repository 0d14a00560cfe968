"""Waiting on the app's state with a deadline, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.pilot import Pilot

DEADLINE = 15.0


async def wait_for(pilot: Pilot[None], condition: Callable[[], bool], what: str,
                   timeout: float = DEADLINE) -> None:
    """Let the app run until ``condition()`` holds; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.02)
