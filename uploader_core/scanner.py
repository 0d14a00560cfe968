"""Finding jobs in the pending directory.

A job exists when a ``<event_id>.json`` is present. Hidden files (a leading dot) are other
programs' temporary files and are never jobs. One ``scandir`` per pass, keeping only a few
integers per file: after a week offline the backlog can be 100,000 packages, and discovery
has to stay well under a second and a few tens of megabytes.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from .package import JSON_SUFFIX, VIDEO_SUFFIX


class Candidate(NamedTuple):
    """A trigger file seen by one scan, not yet read.

    A named tuple, made as the directory is read and sorted as it is: a scan makes one per
    pending package, 100,000 of them after a week offline, and this costs a fraction of what
    building a second object per package after the sort would.
    """

    # The order of the first two fields is the order of the jobs: oldest first, then by name.
    json_mtime_ns: int
    stem: str
    json_size: int
    directory: Path
    video_size: int = 0  # 0 when absent, not a regular file, or not measured (see scan)

    @property
    def json_path(self) -> Path:
        return self.directory / f"{self.stem}{JSON_SUFFIX}"

    @property
    def video_path(self) -> Path:
        return self.directory / f"{self.stem}{VIDEO_SUFFIX}"

    # What the monitor lists for a pending job.
    @property
    def event_id(self) -> str:
        return self.stem

    @property
    def size(self) -> int:
        return self.json_size + self.video_size

    @property
    def since(self) -> float:
        return self.json_mtime_ns / 1e9


def scan(pending: Path, measure_videos: int = 10_000) -> list[Candidate]:
    """Every trigger in ``pending``, oldest first (by the JSON's mtime, then name).

    Only the first ``measure_videos`` videos are measured (what a snapshot lists): the order
    needs every JSON's mtime, but a video's size matters only once its job comes up, and
    skipping those calls halves the work of a large backlog.
    """
    found: list[Candidate] = []
    json_len = len(JSON_SUFFIX)
    with os.scandir(pending) as entries:
        for entry in entries:
            name = entry.name
            if not name.endswith(JSON_SUFFIX) or name.startswith(".") or len(name) == json_len:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            found.append(Candidate(st.st_mtime_ns, name[:-json_len], st.st_size, pending))
    found.sort()
    prefix = os.path.join(pending, "")  # plain strings: a Path per video costs more than its lstat
    for index, candidate in enumerate(found[:measure_videos]):
        try:
            vst = os.lstat(f"{prefix}{candidate.stem}{VIDEO_SUFFIX}")
        except FileNotFoundError:
            continue
        if stat.S_ISREG(vst.st_mode):
            found[index] = candidate._replace(video_size=vst.st_size)
    return found


class SettleTracker:
    """Whether files have stopped changing for ``settle_seconds``.

    A file is settled when its mtime is that old by the wall clock, or when this process has
    seen the same size and mtime for that long by the monotonic clock: the second rule keeps a
    file whose mtime lies in the future (a device clock that jumped) from waiting forever.
    Only files not yet settled are remembered, so memory follows what is being written.
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
        if self._wall() - st.st_mtime_ns / 1e9 >= self.settle_seconds:
            self._seen.pop(key, None)
            return True
        signature = (st.st_size, st.st_mtime_ns)
        now = self._monotonic()
        previous = self._seen.get(key)
        if previous is None or previous[0] != signature:
            self._seen[key] = (signature, now)
            return False
        return now - previous[1] >= self.settle_seconds

    def forget(self, path: Path) -> None:
        self._seen.pop(str(path), None)

    def prune(self) -> None:
        """Drop what belongs to files that are gone."""
        for key in [k for k in self._seen if not os.path.lexists(k)]:
            del self._seen[key]
