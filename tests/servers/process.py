"""What the local servers share: one process we hold, started, stopped and killed on demand.

Each server says how to launch itself (:meth:`LocalProcess._launch`) and how to tell it is
ready (:meth:`LocalProcess._ready`); the rest (locking, pid records for cleanup after a crashed
session, waiting for the port) is here once.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from pathlib import Path

from . import system


class LocalProcess:
    name: str  # for pid records and messages
    port: int
    stop_signal = signal.SIGTERM

    def __init__(self, workspace: Path, log: Path) -> None:
        self._workspace = workspace
        self._log = log
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None

    # --- for subclasses
    def _launch(self, log: object) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _before_start(self) -> None:
        """Runs under the lock before each start."""

    # --- control
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        with self._lock:
            if self.is_running():
                return
            self._before_start()
            with open(self._log, "ab") as log:
                self._proc = self._launch(log)
            system.record_pid(self._workspace, self.name, self._proc.pid)
            system.wait_until(self._answers, f"{self.name} on port {self.port}",
                              details=lambda: system.log_tail(self._log))

    def _answers(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with status {self._proc.returncode}\n"
                               f"{system.log_tail(self._log)}")
        return self._ready()

    def stop(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._terminate(self._proc)
                self._forget()

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        system.stop_process(proc, self.stop_signal)

    def kill(self) -> None:
        """SIGKILL the server and everything it started, like a crashed host."""
        with self._lock:
            if self._proc is not None:
                system.kill_tree(self._proc.pid)
                self._proc.wait()
                self._forget()

    def _forget(self) -> None:
        self._proc = None
        system.record_pid(self._workspace, self.name, None)
        system.wait_port_closed(self.port)

    def restart(self) -> None:
        with self._lock:
            self.stop()
            self.start()

    def ensure_running(self) -> None:
        self.start()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
