"""Event packages like the Animal Analyzer's, written at a steady rate; and the demo's outages.

Each runs in a thread of its own until :meth:`stop`. Every ``bad_every``-th package is broken
on purpose (its document names another event), so that the failed view has something to show.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from uploader_core.testing import sample_document, write_package

# The uploaded copies the demo keeps, locally and on the server: it may run for hours, and
# a throwaway machine's disk is not the point of it.
KEEP_UPLOADED = 200


class EventGenerator:
    def __init__(self, pending_dir: Path, interval: float = 1.5, bad_every: int = 15,
                 sizes: tuple[int, int] = (256_000, 3_000_000),
                 prune: tuple[Path, ...] = ()) -> None:
        self.pending_dir = pending_dir
        self.interval = interval
        self.bad_every = bad_every
        self.sizes = sizes
        self.prune = prune
        self.generated = 0
        self._random = random.Random(42)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.write_one()
            for directory in self.prune:
                _prune(directory, KEEP_UPLOADED)
            self._stop.wait(self.interval)

    def write_one(self) -> str:
        self.generated += 1
        now = datetime.now(timezone.utc)
        event_id = f"evt_{now:%Y%m%dT%H%M%S}Z_cam03_{self.generated:04d}"
        document = sample_document(event_id, detections=self._random.randint(1, 6))
        document["startTime"] = _iso(now - timedelta(seconds=19))
        document["endTime"] = _iso(now)
        if self.bad_every and self.generated % self.bad_every == 0:
            document["eventId"] = f"{event_id}_mismatch"
        # age_seconds=0: written now, as Module B would; the engine waits for it to settle.
        write_package(self.pending_dir, event_id, video=self._random.randint(*self.sizes),
                      document=document, age_seconds=0)
        return event_id


class OutageInjector:
    """Calls ``down()`` after ``first`` seconds, ``up()`` ``length`` seconds later, and again
    every ``every`` seconds."""

    def __init__(self, down: Callable[[], None], up: Callable[[], None], first: float = 6.0,
                 length: float = 4.0, every: float = 45.0) -> None:
        self._down, self._up = down, up
        self.first, self.length, self.every = first, length, every
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-outages", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(20)

    def _run(self) -> None:
        delay = self.first
        while not self._stop.wait(delay):
            self._down()
            self.count += 1
            self._stop.wait(self.length)
            self._up()  # also when stopping: the server must be left whole to be shut down
            delay = self.every


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _prune(directory: Path, keep: int) -> None:
    with contextlib.suppress(OSError):
        files = sorted((p for p in directory.iterdir() if p.is_file()),
                       key=lambda p: p.stat().st_mtime)
        for path in files[:-keep]:
            path.unlink(missing_ok=True)

