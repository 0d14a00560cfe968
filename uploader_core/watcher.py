"""Instant pick-up: watch the pending directory and start a pass once a new file settles.

inotify (through the watchdog library) tells us when Module B writes; the periodic scan stays
as the safety net, and where inotify is unavailable the engine simply relies on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from .deadline import DeadlineTimer

log = logging.getLogger(__name__)

# A little past the settle time, so the pass finds the file settled by its mtime.
MARGIN = 0.1
_WRITES = frozenset({"created", "modified", "moved", "closed"})


def _not_a_shutdown_race(record: logging.LogRecord) -> bool:
    # watchdog logs this at ERROR when an event arrives while its observer stops: harmless,
    # and an operator reading it would look for a fault that is not there.
    return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_not_a_shutdown_race)


class PendingWatcher(FileSystemEventHandler):
    """Calls ``on_settled()`` ``settle_seconds`` after the last change of a package file."""

    def __init__(self, directory: Path, settle_seconds: float,
                 on_settled: Callable[[], None]) -> None:
        self.directory = directory
        self.settle_seconds = settle_seconds
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._timer = DeadlineTimer(on_settled, "uploader-watch-timer")

    def start(self) -> bool:
        """Start watching; False (and a log line) when the platform cannot watch."""
        try:
            observer = Observer()
            observer.schedule(self, str(self.directory), recursive=False)
            observer.daemon = True
            observer.start()
        except Exception as exc:
            log.warning("cannot watch %s (%s); new events are picked up by the periodic "
                        "scan only", self.directory, exc)
            return False
        self._observer = observer
        return True

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        self._timer.close()

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Only writes count: the engine's own reads (open, close-without-write) must not
        # schedule another pass after every upload.
        if event.event_type not in _WRITES:
            return
        path = event.dest_path if event.event_type == "moved" and event.dest_path else \
            event.src_path
        name = Path(str(path)).name
        if event.is_directory or name.startswith(".") or not name.endswith((".json", ".mp4")):
            return
        self._timer.arm(self.settle_seconds + MARGIN)
