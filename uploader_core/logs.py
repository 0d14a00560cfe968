"""Logging to stderr with timestamps: readable in a terminal and in journald alike."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"


def setup(level: str = "INFO") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_uploader", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
    handler._uploader = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # paramiko narrates every handshake at INFO; its warnings still come through.
    logging.getLogger("paramiko").setLevel(max(logging.WARNING, root.level))
