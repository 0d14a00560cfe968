"""Logging to stderr: timestamps in a terminal, syslog priorities under journald.

Under systemd, journald adds its own timestamps and understands a ``<N>`` prefix as the
message's priority, so ``journalctl -p warning`` shows the warnings and errors alone.
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"
JOURNAL_FORMAT = "<%(priority)d>%(name)s: %(message)s"

_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
               logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITIES.get(record.levelno, 6)
        record.priority = priority
        # One journal entry per record: continuation lines (tracebacks) keep the priority.
        return super().format(record).replace("\n", f"\n<{priority}>")


def stderr_is_journal(environ: dict[str, str] | None = None) -> bool:
    """True when stderr is connected to journald (systemd sets ``$JOURNAL_STREAM``)."""
    stream = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return bool(inode) and (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


def setup(level: str = "INFO") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_uploader", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(_JournalFormatter(JOURNAL_FORMAT))
    else:
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
    handler._uploader = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # paramiko narrates every handshake at INFO and logs a traceback at ERROR for each failed
    # one; the SFTP plugin reports every failure in its own words, so keep paramiko for DEBUG.
    logging.getLogger("paramiko").setLevel(
        logging.DEBUG if root.level <= logging.DEBUG else logging.CRITICAL)
