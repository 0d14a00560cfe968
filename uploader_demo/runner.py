"""``uploader demo``: a throwaway PostgreSQL and SFTP server, generated events, the real engine
with its built-in plugins, an occasional outage, and the TUI attached to it all.

Everything lives in one temporary directory and is stopped and removed on the way out,
whichever way out it is: the end of ``--seconds``, ``q`` in the TUI, Ctrl-C, SIGTERM, or
SIGHUP (an SSH session that drops).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from uploader_core import logs
from uploader_core.control import ControlServer
from uploader_core.engine import DataUploader
from uploader_core.errors import UploaderError

from .events import EventGenerator, OutageInjector
from .postgres import DemoSetupError, ThrowawayPostgres
from .sftp import REMOTE_JSON_DIR, REMOTE_VIDEO_DIR, ThrowawaySftp

log = logging.getLogger("uploader.demo")

EXIT_OK, EXIT_FAILED, EXIT_SETUP = 0, 1, 2
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def config(work: Path, database: dict[str, Any], sftp: dict[str, Any]) -> dict[str, Any]:
    """The engine's configuration: short intervals, so that a minute shows everything."""
    return {"uploader": {
        "pending_upload_dir": str(work / "pending"),
        "uploaded_dir": str(work / "uploaded"),
        "failed_dir": str(work / "failed"),
        "scan_interval_seconds": 1.0,
        "settle_seconds": 0.5,
        "orphan_timeout_seconds": 60.0,
        "retry": {"initial_backoff_seconds": 1.0, "max_backoff_seconds": 4.0},
        "control": {"socket_path": str(work / "uploader.sock")},
        "database": database,
        "sftp": sftp,
    }}


class Demo:
    """The running parts; :meth:`close` (via the exit stack) undoes all of them."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="uploader-demo-"))
        stack.callback(shutil.rmtree, self.work, ignore_errors=True)
        # Traversable by the database's account (it runs as another user when we are root),
        # listable by nobody else.
        os.chmod(self.work, 0o711)
        self.postgres = ThrowawayPostgres(self.work / "postgres")
        stack.callback(self.postgres.stop)
        self.postgres.start()
        self.sftp = ThrowawaySftp(self.work / "sftp")
        stack.callback(self.sftp.close)
        self.sftp.start()
        self.engine = DataUploader(config(self.work, self.postgres.settings(),
                                          self.sftp.settings()))
        stack.callback(self.engine.close)
        self.engine.init_storage()
        self.control = ControlServer.for_engine(self.engine)
        self.control.start()
        stack.callback(self.control.close)
        self._thread = threading.Thread(target=self._run_engine, name="demo-engine")
        self._thread.start()
        stack.callback(self._stop_engine)
        remote = self.sftp.root
        self.events = EventGenerator(
            self.engine.pending_dir,
            prune=(self.engine.uploaded_dir, remote / REMOTE_VIDEO_DIR.strip("/"),
                   remote / REMOTE_JSON_DIR.strip("/")))
        stack.callback(self.events.stop)
        self.events.start()
        self.outages = OutageInjector(self.sftp.outage, self.sftp.restore)
        stack.callback(self.outages.stop)
        self.outages.start()

    def _run_engine(self) -> None:
        try:
            self.engine.run()
        except Exception:
            log.exception("the engine stopped with an error")

    def _stop_engine(self) -> None:
        self.engine.request_stop()
        self._thread.join(30)

    @property
    def socket_path(self) -> Path:
        return self.control.path

    def summary(self, seconds: float) -> str:
        totals = self.engine.monitor.snapshot()["totals"]
        return (f"demo ran {seconds:.0f} s: {self.events.generated} events generated, "
                f"{totals['completed']} completed, {totals['retries']} retried, "
                f"{totals['quarantined']} quarantined, {self.outages.count} SFTP outages "
                f"injected\nworkdir {self.work} (removed)")


def run_demo(headless: bool, seconds: float | None) -> int:
    started = time.monotonic()
    logs.setup("WARNING")
    try:
        with contextlib.ExitStack() as stack:
            # A second Ctrl-C must not cut the clean-up short (callbacks run last to first).
            stack.callback(signal.signal, signal.SIGINT, signal.getsignal(signal.SIGINT))
            print("uploader demo: starting a throwaway PostgreSQL and SFTP server...",
                  file=sys.stderr)
            demo = Demo(stack)
            stack.callback(signal.signal, signal.SIGINT, signal.SIG_IGN)
            if headless:
                _run_headless(demo, seconds)
            else:
                _log_to(demo.work / "uploader.log", stack)
                _run_tui(demo.socket_path, seconds)
            completed = demo.engine.monitor.totals["completed"]
            summary = demo.summary(time.monotonic() - started)
    except (DemoSetupError, UploaderError) as exc:
        print(f"uploader demo: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:  # during the set-up; the stack has undone it
        print("uploader demo: interrupted; everything it started is stopped and removed",
              file=sys.stderr)
        return 130
    print(summary)
    return EXIT_OK if completed else EXIT_FAILED


def _run_headless(demo: Demo, seconds: float | None) -> None:
    stop = threading.Event()
    how_long = f"for {seconds:g} s" if seconds else "until Ctrl-C"
    print(f"uploader demo: running {how_long}; attach with: uploader tui --socket "
          f"{demo.socket_path}", file=sys.stderr)

    def stop_now(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, stop_now) for sig in _STOP_SIGNALS}
    try:
        stop.wait(seconds)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a demo without --seconds ends
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _log_to(path: Path, stack: contextlib.ExitStack) -> None:
    """While the TUI owns the terminal, the log goes to a file (stderr would garble it)."""
    root = logging.getLogger()
    saved = list(root.handlers)
    for handler in saved:
        root.removeHandler(handler)
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(logging.Formatter(logs.FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
    root.addHandler(file_handler)
    level = root.level
    root.setLevel(logging.INFO)

    def restore() -> None:
        root.removeHandler(file_handler)
        file_handler.close()
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)

    stack.callback(restore)


def _run_tui(socket_path: Path, seconds: float | None) -> None:
    from uploader_tui.app import UploaderApp

    app = UploaderApp(socket_path, start_hint="the demo's engine is starting",
                      exit_on_signals=True)
    def time_is_up() -> None:
        with contextlib.suppress(RuntimeError):  # the app ended meanwhile
            app.call_from_thread(app.exit)

    timer = None
    if seconds:
        timer = threading.Timer(seconds, time_is_up)
        timer.daemon = True
        timer.start()
    try:
        app.run()
    finally:
        if timer is not None:
            timer.cancel()
