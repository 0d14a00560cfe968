"""SIGTERM, SIGINT and SIGHUP for the service loop.

The handler only writes the signal's number to a pipe (async-signal-safe); a thread reads it
and calls back. Doing the work in the handler itself could deadlock on a lock the interrupted
code holds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("uploader")


def install(on_stop: Callable[[], None], on_reload: Callable[[], None]) -> Callable[[], None]:
    """Route the signals to the callbacks until the returned ``restore()`` is called.

    Outside the main thread (an engine run by a test or an application thread) nothing is
    installed: only the main thread may set handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def handler(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):
            os.write(write_fd, bytes([signum]))

    def watch() -> None:
        while True:
            data = os.read(read_fd, 1)
            if not data or data == b"\0":
                return
            if data[0] == signal.SIGHUP:
                log.info("received SIGHUP; reloading the configuration")
                on_reload()
                continue
            log.info("received %s; stopping", signal.Signals(data[0]).name)
            on_stop()

    previous = {sig: signal.signal(sig, handler)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    watcher = threading.Thread(target=watch, name="uploader-signals", daemon=True)
    watcher.start()

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)
        os.write(write_fd, b"\0")
        watcher.join(timeout=1)
        os.close(read_fd)
        os.close(write_fd)

    return restore
