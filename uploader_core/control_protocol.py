"""What the control socket's server and its clients agree on: framing, limits, the path.

The protocol is newline-delimited JSON over a Unix domain socket; README.md ("The control
socket") describes it for people writing their own clients. Both sides import this module,
so it must stay free of anything but the standard library.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = 1
SOCKET_NAME = "uploader.sock"
DEFAULT_PENDING_DIR = "data/pending_upload"

# One request line may be this long; anything longer is answered with an error and the
# connection is closed, so a client cannot make the server buffer without bound.
MAX_REQUEST_BYTES = 64 * 1024
# sockaddr_un holds 108 bytes with the terminating NUL; the server also binds a temporary
# name of up to this many bytes beside the final one, so both must fit.
MAX_PATH_BYTES = 100

COMMANDS = ("hello", "snapshot", "job", "subscribe", "unsubscribe", "scan_now", "pause",
            "resume", "retry", "requeue")


def encode(message: Mapping[str, Any]) -> bytes:
    """One protocol line. NaN and Infinity are refused: they are not JSON."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False,
                      default=str).encode("utf-8") + b"\n"


def socket_path(section: Mapping[str, Any] | None) -> Path:
    """The control socket of the ``uploader`` configuration section ``section``.

    Works on the raw section read from a file as well as on the validated one, so that
    ``uploader status`` finds the socket without loading any plugin. The default sits beside
    the pending directory (``data/pending_upload`` gives ``data/uploader.sock``): the
    engine's state lives there, and it is a directory the engine can write.
    """
    section = section if isinstance(section, Mapping) else {}
    control = section.get("control")
    configured = control.get("socket_path") if isinstance(control, Mapping) else None
    if isinstance(configured, str) and configured:
        return Path(os.path.abspath(os.path.expanduser(configured)))
    pending = section.get("pending_upload_dir")
    if not isinstance(pending, str) or not pending:
        pending = DEFAULT_PENDING_DIR
    return Path(os.path.abspath(pending)).parent / SOCKET_NAME
