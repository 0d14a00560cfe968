"""Messages the socket-reading thread posts to the application (Textual's post_message is
thread-safe; widgets are only ever touched on the application's own thread)."""

from __future__ import annotations

from typing import Any

from textual.message import Message


class Connected(Message):
    """Attached to the engine; ``snapshot`` is its state at the start of the stream."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        super().__init__()
        self.snapshot = snapshot


class Disconnected(Message):
    """Not attached; ``reason`` says why, ``not_running`` when nothing answers at all."""

    def __init__(self, reason: str, not_running: bool) -> None:
        super().__init__()
        self.reason = reason
        self.not_running = not_running


class SnapshotReceived(Message):
    """A fresh snapshot while attached (the pending list changes with every pass)."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        super().__init__()
        self.snapshot = snapshot


class EngineEvents(Message):
    """Events of the subscription, in order; batched so that a burst is one repaint."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        super().__init__()
        self.events = events


class JobDetailReady(Message):
    """The engine's answer to ``job``: everything known about one event."""

    def __init__(self, detail: dict[str, Any]) -> None:
        super().__init__()
        self.detail = detail


class CommandDone(Message):
    """A command succeeded; ``text`` is for the person who asked."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
