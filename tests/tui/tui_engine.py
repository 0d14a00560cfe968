"""A real engine (in-memory plugins) behind a real control socket, for the TUI's tests.

A module of its own, not the conftest: ``from conftest import ...`` would find whichever
conftest was imported first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from uploader_core import DataUploader
from uploader_core.control import ControlServer
from uploader_core.testing import MemoryRemote, MemoryStore


@dataclass
class LiveEngine:
    """An engine and its control server; ``start()`` runs the service loop in a thread."""

    engine: DataUploader
    store: MemoryStore
    remote: MemoryRemote
    root: Path
    socket: Path
    server: ControlServer | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def pending(self) -> Path:
        return self.root / "pending"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    def start(self) -> LiveEngine:
        self.server = ControlServer(self.engine, self.socket)
        self.server.start()
        self.thread = threading.Thread(target=self.engine.run, name="engine")
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread is not None:
            self.engine.request_stop()
            self.thread.join(20)
            assert not self.thread.is_alive()
            self.thread = None
        if self.server is not None:
            self.server.close()
            self.server = None
