"""Writing event packages fast: many small ones, or one very large video.

``uploader_core.testing.write_package`` makes each video from a hash chain, which is right for
tests and too slow for a gigabyte; here videos are random blocks written once and reused, and
documents come from one template. What the uploader reads is the same: a ``.mp4`` written
first, then its ``.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from uploader_core.testing import sample_document

MIB = 1 << 20
_BLOCK = os.urandom(MIB)


def document(event_id: str, detections: int = 2) -> bytes:
    return json.dumps(sample_document(event_id, detections)).encode()


class DocumentTemplate:
    """``sample_document`` serialised once; each event only substitutes its id."""

    _MARK = "@@EVENT@@"

    def __init__(self, detections: int = 2) -> None:
        self._text = json.dumps(sample_document(self._MARK, detections))

    def __call__(self, event_id: str) -> bytes:
        return self._text.replace(self._MARK, event_id).encode()


def write_video(path: Path, size: int) -> None:
    """``size`` bytes of incompressible data, written a mebibyte at a time."""
    with open(path, "wb") as out:
        left = size
        while left > 0:
            piece = min(left, MIB)
            out.write(_BLOCK[:piece])
            left -= piece


def write_small_packages(directory: Path, ids: list[str], video_size: int, *,
                         age_seconds: float = 0.0, detections: int = 2) -> int:
    """Write a package per id (video of ``video_size`` bytes, then its JSON); total bytes.

    With ``age_seconds`` both files are back-dated, so they count as settled at once.
    """
    directory.mkdir(parents=True, exist_ok=True)
    template = DocumentTemplate(detections)
    video = (_BLOCK * (video_size // MIB + 1))[:video_size]
    stamp = time.time() - age_seconds
    total = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for event_id in ids:
        doc = template(event_id)
        for name, data in ((f"{event_id}.mp4", video), (f"{event_id}.json", doc)):
            fd = os.open(directory / name, flags, 0o644)
            try:
                os.write(fd, data)
                if age_seconds:
                    os.utime(fd, (stamp, stamp))
            finally:
                os.close(fd)
        total += len(video) + len(doc)
    return total


def link_packages(source: Path, target: Path, ids: list[str] | None = None) -> list[str]:
    """Hard-link the packages of ``source`` into ``target`` (a fresh pending directory).

    The uploader moves what it uploaded out of the pending directory; hard links let every
    repetition start from the same bytes without writing them again.
    """
    target.mkdir(parents=True, exist_ok=True)
    if ids is None:
        ids = sorted(p.name[:-5] for p in source.iterdir() if p.name.endswith(".json"))
    for event_id in ids:
        for suffix in (".mp4", ".json"):
            os.link(source / f"{event_id}{suffix}", target / f"{event_id}{suffix}")
    return ids


def event_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:06d}" for i in range(count)]
