"""One engine per pending directory.

Two engines on one queue would race for the same packages. The lock is an ``flock`` on a
hidden file in the pending directory (hidden files are never jobs): the kernel releases it
when its holder dies, so a lock left by a killed engine never blocks the next start.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .errors import ConfigurationError

LOCK_NAME = ".uploader.lock"


class QueueBusy(ConfigurationError):
    """Another engine is processing the same pending directory."""


class QueueLock:
    def __init__(self, pending_dir: Path) -> None:
        self.path = pending_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise QueueBusy(
                f"another uploader ({holder}) is already processing {self.path.parent}; "
                "stop it first, or point this one at another pending_upload_dir",
                setting="uploader.pending_upload_dir") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                          time.gmtime())}).encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            # The file stays: unlinking it would let a third engine lock a new inode while a
            # second still waits on the old one.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {data['pid']} on {data['host']}, started {data['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"
