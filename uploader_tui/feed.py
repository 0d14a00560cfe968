"""The one thread that talks to the engine: it subscribes, reads the stream, and reconnects.

It runs in a Textual thread worker and reaches the application only through ``post`` (the
application's thread-safe ``post_message``). Requests the person makes (scan now, retry, ...)
use short connections of their own, so this thread never waits on anything but the socket.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.message import Message

from uploader_core.control_client import (
    START_HINT,
    ControlConnection,
    ControlError,
    EngineNotRunning,
    result_of,
)

from .messages import Connected, Disconnected, EngineEvents, SnapshotReceived

RECONNECT_SECONDS = 1.0
# The pending list is only in snapshots; a new one is asked for after a pass starts, but not
# more often than this, whatever the scan interval.
REFRESH_SECONDS = 1.0
READ_SECONDS = 0.25  # how often the thread looks at the stop flag while the stream is quiet
BATCH = 500  # events posted as one message at most


class EngineFeed:
    def __init__(self, path: Path, post: Callable[[Message], Any],
                 hint: str = START_HINT) -> None:
        self.path = path
        self._post = post
        self._hint = hint
        self._stop = threading.Event()
        self._connection: ControlConnection | None = None

    def stop(self) -> None:
        """Make :meth:`run` return soon; safe from any thread."""
        self._stop.set()
        connection = self._connection
        if connection is not None:
            connection.shutdown()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                connection = ControlConnection(self.path, timeout=10, hint=self._hint)
            except ControlError as exc:
                self._post(Disconnected(str(exc), isinstance(exc, EngineNotRunning)))
                self._stop.wait(RECONNECT_SECONDS)
                continue
            self._connection = connection
            try:
                with connection:
                    self._follow(connection)
            except ControlError as exc:
                if not self._stop.is_set():
                    self._post(Disconnected(f"lost the connection to the uploader: {exc}",
                                            False))
            finally:
                self._connection = None
            self._stop.wait(RECONNECT_SECONDS)

    def _follow(self, connection: ControlConnection) -> None:
        subscribed = connection.request("subscribe")
        self._post(Connected(subscribed["snapshot"]))
        refresh_id: int | None = None
        dirty, last_refresh = False, 0.0
        while not self._stop.is_set():
            events: list[dict[str, Any]] = []
            message = connection.next_message(READ_SECONDS)
            while message is not None:
                if "event" in message:
                    event = message["event"]
                    events.append(event)
                    dirty = dirty or event.get("kind") in ("pass_started", "requeued")
                elif refresh_id is not None and message.get("id") == refresh_id:
                    refresh_id = None
                    if events:  # keep the order: events first, then the newer snapshot
                        self._post(EngineEvents(events))
                        events = []
                    self._post(SnapshotReceived(result_of(message)))
                if len(events) >= BATCH:
                    break
                message = connection.next_message(0)
            if events:
                self._post(EngineEvents(events))
            now = time.monotonic()
            if dirty and refresh_id is None and now - last_refresh >= REFRESH_SECONDS:
                refresh_id = connection.send("snapshot")
                dirty, last_refresh = False, now
