"""Reading one event package from the pending directory and deciding whether it is acceptable.

Everything here is local and pure: no endpoint is involved, so every error raised is either the
package's own fault (:class:`PermanentJobError`) or a sign that Module B is still at work or the
files moved under us (:class:`TransientError`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import PermanentJobError, TransientError
from .job import Job

EVENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
VIDEO_SUFFIX = ".mp4"
JSON_SUFFIX = ".json"
# jsonb and the server's recursion limit refuse very deep documents; refuse them first, with a
# message, rather than as a database error.
MAX_NESTING = 200


class VideoMissing(TransientError):
    """The JSON is there but its video is not (yet)."""


def check_event_id(stem: str) -> None:
    if not EVENT_ID_PATTERN.fullmatch(stem):
        shown = stem if len(stem) <= 80 else stem[:77] + "..."
        raise PermanentJobError(
            f"event id {shown!r} is not valid: it must be 1-128 characters of letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )


def _reject_constant(name: str) -> Any:
    raise PermanentJobError(f"JSON contains {name}, which is not valid JSON and jsonb refuses")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise PermanentJobError(
                f"JSON object has the key {key!r} twice; which value is meant is ambiguous"
            )
        result[key] = value
    return result


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise PermanentJobError(f"JSON string {where} contains a NUL character (\\u0000), "
                                "which jsonb refuses")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PermanentJobError(
            f"JSON string {where} contains an unpaired surrogate escape, which is not valid "
            "Unicode"
        ) from exc


def _check_values(value: Any, path: str, depth: int) -> None:
    if depth > MAX_NESTING:
        raise PermanentJobError(f"JSON is nested more than {MAX_NESTING} levels deep")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, f"key at {path}")
            _check_values(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_values(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, str):
        _check_text(value, f"at {path}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise PermanentJobError(f"JSON number at {path} is out of range")


def parse_document(document: bytes, name: str) -> Mapping[str, Any]:
    """Parse and check a JSON document as jsonb will see it; it must be an object."""
    try:
        text = document.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PermanentJobError(
            f"{name} is not valid UTF-8 (byte {exc.start}: {document[exc.start:exc.start+1]!r})"
        ) from exc
    # RFC 8259 lets a parser ignore a byte-order mark; the file itself is uploaded unchanged.
    text = text.removeprefix("\ufeff")
    try:
        value = json.loads(text, parse_constant=_reject_constant,
                           object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise PermanentJobError(f"{name} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise PermanentJobError(f"{name} is nested too deeply to parse") from exc
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        raise PermanentJobError(f"{name} must hold a JSON object, not {kind}")
    try:
        _check_values(value, "$", 0)
    except RecursionError as exc:
        raise PermanentJobError(f"{name} is nested too deeply") from exc
    return value


def _read_json(path: Path, max_bytes: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        # O_NOFOLLOW fails with ELOOP on a link: say so rather than "too many levels".
        if path.is_symlink():
            raise PermanentJobError(f"{path.name} is a symbolic link; refusing to follow it") \
                from exc
        raise PermanentJobError(f"cannot open {path.name}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb", buffering=0) as file:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermanentJobError(f"{path.name} is not a regular file")
        if st.st_size > max_bytes:
            raise PermanentJobError(
                f"{path.name} is {st.st_size} bytes, over the limit of {max_bytes} "
                "(uploader.max_metadata_bytes)"
            )
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PermanentJobError(f"{path.name} grew past the limit of {max_bytes} bytes "
                                "(uploader.max_metadata_bytes)")
    return data


def video_stat(path: Path) -> os.stat_result:
    """``lstat`` the video and refuse anything that is not a non-empty regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError as exc:
        raise VideoMissing(f"video {path.name} is missing") from exc
    if stat.S_ISLNK(st.st_mode):
        raise PermanentJobError(f"video {path.name} is a symbolic link; refusing to follow it")
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise PermanentJobError(f"video {path.name} is {kind}")
    if st.st_size == 0:
        raise PermanentJobError(f"video {path.name} is empty")
    if not os.access(path, os.R_OK):
        raise PermanentJobError(f"video {path.name} is not readable (mode {st.st_mode & 0o777:o})")
    return st


def read_package(json_path: Path, video_path: Path, *, max_metadata_bytes: int) -> Job:
    """Read and check the package whose trigger is ``json_path``.

    The event id is the file stem and must already have passed :func:`check_event_id`.
    Raises :class:`FileNotFoundError` when the JSON vanished, :class:`VideoMissing` when the
    video is not there, :class:`PermanentJobError` when the package can never be uploaded.
    """
    event_id = json_path.name[: -len(JSON_SUFFIX)]
    vst = video_stat(video_path)
    document = _read_json(json_path, max_metadata_bytes)
    metadata = parse_document(document, json_path.name)
    declared = metadata.get("eventId")
    if declared is not None and declared != event_id:
        raise PermanentJobError(
            f"eventId {str(declared)[:140]!r} in {json_path.name} does not match the file "
            f"name's event id {event_id!r}"
        )
    return Job(
        event_id=event_id,
        json_path=json_path,
        video_path=video_path,
        document=document,
        metadata=metadata,
        json_sha256=hashlib.sha256(document).hexdigest(),
        video_size=vst.st_size,
        video_mtime_ns=vst.st_mtime_ns,
    )
