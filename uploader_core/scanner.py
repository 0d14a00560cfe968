"""Finding jobs in the pending directory.

A job exists when a ``<event_id>.json`` is present. Hidden files (a leading dot) are other
programs' temporary files and are never jobs. One ``scandir`` per pass: with a backlog of
100,000 events, discovery has to stay well under a second.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .package import JSON_SUFFIX, VIDEO_SUFFIX


@dataclass(frozen=True)
class Candidate:
    """A trigger file seen by one scan, not yet read."""

    stem: str
    json_path: Path
    video_path: Path
    json_mtime_ns: int
    json_size: int
    json_is_regular: bool
    video_present: bool
    video_size: int  # 0 when absent or not a regular file


def scan(pending: Path) -> list[Candidate]:
    """Every trigger in ``pending``, oldest first (by the JSON's mtime, then name)."""
    found: list[Candidate] = []
    videos: dict[str, os.DirEntry[str]] = {}
    triggers: list[os.DirEntry[str]] = []
    with os.scandir(pending) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            if name.endswith(JSON_SUFFIX) and len(name) > len(JSON_SUFFIX):
                triggers.append(entry)
            elif name.endswith(VIDEO_SUFFIX):
                videos[name] = entry
    for entry in triggers:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        stem = entry.name[: -len(JSON_SUFFIX)]
        video_name = stem + VIDEO_SUFFIX
        video = videos.get(video_name)
        video_size = 0
        if video is not None:
            try:
                vst = video.stat(follow_symlinks=False)
                video_size = vst.st_size if stat.S_ISREG(vst.st_mode) else 0
            except FileNotFoundError:
                video = None
        found.append(Candidate(
            stem=stem,
            json_path=pending / entry.name,
            video_path=pending / video_name,
            json_mtime_ns=st.st_mtime_ns,
            json_size=st.st_size,
            json_is_regular=stat.S_ISREG(st.st_mode),
            video_present=video is not None,
            video_size=video_size,
        ))
    found.sort(key=lambda c: (c.json_mtime_ns, c.stem))
    return found


class SettleTracker:
    """Whether files have stopped changing for ``settle_seconds``.

    A file is settled when its mtime is that old by the wall clock, or when this process has
    seen the same size and mtime for that long by the monotonic clock: the second rule keeps a
    file whose mtime lies in the future (a device clock that jumped) from waiting forever.
    """

    def __init__(self, settle_seconds: float,
                 wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settle_seconds = settle_seconds
        self._wall = wall
        self._monotonic = monotonic
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}

    def settled(self, path: Path, st: os.stat_result) -> bool:
        if self.settle_seconds <= 0:
            return True
        key = str(path)
        signature = (st.st_size, st.st_mtime_ns)
        now = self._monotonic()
        previous = self._seen.get(key)
        if previous is None or previous[0] != signature:
            self._seen[key] = (signature, now)
            first_seen = now
        else:
            first_seen = previous[1]
        age = self._wall() - st.st_mtime_ns / 1e9
        return age >= self.settle_seconds or now - first_seen >= self.settle_seconds

    def forget(self, path: Path) -> None:
        self._seen.pop(str(path), None)

    def prune(self, keep: set[str]) -> None:
        """Drop what belongs to files that are gone, so memory follows the queue."""
        for key in [k for k in self._seen if k not in keep]:
            del self._seen[key]
