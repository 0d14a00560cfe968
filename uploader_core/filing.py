"""Moving packages into the archive and into quarantine without ever losing a byte.

A move is a ``rename`` where the directories share a filesystem. Across filesystems it is a
copy to a hidden temporary name, an ``fsync``, a rename into place and only then the removal
of the original, so that a crash at any point leaves at least one complete copy. A name that is
already taken by different content is never overwritten: the newcomer gets a numbered name.

Each move makes itself durable with an ``fsync`` of both directories, unless it is handed a
:class:`DirectorySyncs`: many moves then share one ``fsync`` per directory (a group commit),
which the caller issues before it relies on any of them.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_NAME_MAX = 255


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` survive a power cut (SD cards lose power)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class DirectorySyncs:
    """The directories that moves changed, made durable together by :meth:`flush`.

    A directory fsync costs about the same for one rename as for a hundred (on an SD card, a
    flush of the card's cache each time), so moves done one after another can share them.
    Destinations are synced before sources, so that a power cut between the two leaves a file
    in both directories rather than in neither; a move the other way round (into a directory
    that an earlier move left) first flushes the moves before it.
    """

    def __init__(self) -> None:
        self._destinations: dict[Path, None] = {}
        self._sources: dict[Path, None] = {}

    def moving(self, source: Path, destination: Path) -> None:
        """A file is about to leave ``source`` for ``destination``.

        Called before the move, so that the moves it must not share a sync with (those the
        other way round) are flushed before it happens.
        """
        if source in self._destinations or destination in self._sources:
            self.flush()
        self._destinations.setdefault(destination)
        self._sources.setdefault(source)

    def flush(self) -> None:
        """fsync every destination, then every source, of the moves since the last flush."""
        destinations, self._destinations = self._destinations, {}
        sources, self._sources = self._sources, {}
        for directory in destinations:
            fsync_dir(directory)
        for directory in sources:
            if directory not in destinations:
                fsync_dir(directory)


def _numbered(dest: Path, n: int) -> Path:
    name = dest.name
    stem, dot, suffix = name.rpartition(".")
    return dest.with_name(f"{stem}~{n}.{suffix}" if dot and stem else f"{name}~{n}")


def _free_name(dest: Path, src: Path) -> Path | None:
    """``dest`` if free; ``None`` if it already holds exactly ``src``'s bytes; else a new name."""
    # Only regular files are compared: opening a FIFO would block.
    comparable = stat.S_ISREG(os.lstat(src).st_mode)
    n = 0
    candidate = dest
    while True:
        if not os.path.lexists(candidate):
            return candidate
        if (comparable and stat.S_ISREG(os.lstat(candidate).st_mode)
                and filecmp.cmp(src, candidate, shallow=False)):
            return None
        n += 1
        candidate = _numbered(dest, n)


def _copy_then_replace(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.moving")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1024 * 1024)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, tmp, follow_symlinks=False)
        os.replace(tmp, dest)
    except BaseException:
        # A full disk must not leave a partial copy using up what space there is.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)
    os.unlink(src)


def move_into(src: Path, directory: Path, syncs: DirectorySyncs | None = None) -> Path:
    """Move ``src`` into ``directory``, keeping its name when that is free; return where it is.

    The move is durable when this returns; with ``syncs``, only once ``syncs`` is flushed.
    Raises :class:`OSError` (disk full, permission denied) with the original still in place.
    """
    own = syncs is None
    syncs = DirectorySyncs() if syncs is None else syncs
    directory.mkdir(parents=True, exist_ok=True)
    dest = _free_name(directory / src.name, src)
    if dest is None:
        # An earlier move copied it and crashed before removing the original, perhaps before
        # its copy was synced: the copy is made durable before the original goes.
        fsync_dir(directory)
        syncs.moving(src.parent, directory)
        os.unlink(src)
        if own:
            syncs.flush()
        return directory / src.name
    syncs.moving(src.parent, directory)
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV or not stat.S_ISREG(os.lstat(src).st_mode):
            raise
        _copy_then_replace(src, dest)
    if own:
        syncs.flush()
    return dest


def _safe_file_name(name: str) -> str:
    """Shorten a name that would not fit the filesystem's limit, keeping it recognisable."""
    if len(name.encode("utf-8", "surrogateescape")) <= _NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{name[:100]}-{digest}.error.json"


def write_error_file(directory: Path, stem: str, report: Mapping[str, Any]) -> Path:
    """Write ``<stem>.error.json`` atomically; an earlier report of the same stem is kept."""
    directory.mkdir(parents=True, exist_ok=True)
    name = _safe_file_name(f"{stem}.error.json")
    dest = directory / name
    n = 0
    while os.path.lexists(dest):
        n += 1
        dest = directory / _safe_file_name(f"{stem}.error~{n}.json")
    tmp = directory / f".{name[:200]}.tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(dict(report), out, indent=2, ensure_ascii=False)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, dest)
    fsync_dir(directory)
    return dest


def quarantine(
    directory: Path, stem: str, files: list[Path], reason: str, details: Mapping[str, Any]
) -> list[Path]:
    """Move ``files`` (the trigger JSON last) into ``directory`` beside a report of why.

    Missing files are skipped. Returns where each moved file went.
    """
    existing = [f for f in files if os.path.lexists(f)]
    report = {
        "event_id": stem,
        "reason": reason,
        "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": [f.name for f in existing],
        **details,
    }
    write_error_file(directory, stem, report)
    moved = []
    for f in existing:
        with contextlib.suppress(FileNotFoundError):
            moved.append(move_into(f, directory))
    return moved
