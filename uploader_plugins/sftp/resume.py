"""Resuming a video upload from the temporary file an earlier attempt left on the server.

Two questions are answered here, without the network:

- Which blocks of the partial remote file to read back to believe that it is a prefix of the
  local video (:func:`sample_blocks`). The last bytes before the resume point are always
  read: that is where a write cut short, or a server that completed its writes out of order,
  leaves a wrong or missing block. A few random blocks elsewhere catch a partial file of
  another video with the same name (an event written again by the analyzer) at little cost:
  about 200 KiB read back, whatever the size.
- Where the local hash of the prefix can start (:class:`PrefixHashes`). The receipt's sha256
  covers the whole file, so the prefix that is not sent again is hashed locally. Hash states
  copied every few MiB during earlier attempts of the same file let a resume hash only the
  bytes since the last of them, instead of the whole prefix again on every attempt: on a link
  cut every few minutes, hashing the prefix again each time would cost CPU quadratic in the
  file size.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

# Always read back: the last bytes before the resume point.
TAIL_BYTES = 64 * 1024
# Random blocks: this many, of this size; half of them within the last WINDOW_BYTES before
# the tail, where a server's out-of-order writes can leave a hole, half anywhere.
SAMPLE_BLOCKS = 6
SAMPLE_BYTES = 16 * 1024
WINDOW_BYTES = 4 * 1024 * 1024

# A hash state is kept at least every CHECKPOINT_BYTES of a file, at most MAX_CHECKPOINTS per
# file (a sha256 state is a few hundred bytes), for the last KEPT_FILES files.
CHECKPOINT_BYTES = 16 * 1024 * 1024
MAX_CHECKPOINTS = 256
KEPT_FILES = 4


def sample_blocks(length: int) -> list[tuple[int, int]]:
    """``(offset, size)`` blocks of ``[0, length)`` to compare, sorted, never overlapping."""
    tail = max(0, length - TAIL_BYTES)
    blocks = {(tail, length - tail)}
    slots = tail // SAMPLE_BYTES  # whole sample blocks that fit before the tail
    if slots:
        window = max(1, min(slots, WINDOW_BYTES // SAMPLE_BYTES))
        for n in range(SAMPLE_BLOCKS):
            near_end = n % 2 == 0
            slot = slots - 1 - secrets.randbelow(window) if near_end else secrets.randbelow(slots)
            blocks.add((slot * SAMPLE_BYTES, SAMPLE_BYTES))
    return sorted(blocks)


FileKey = tuple[str, int, int, int, int]


@dataclass
class Checkpoints:
    """Hash states of one file by offset, one at least every ``every`` bytes."""

    every: int
    states: dict[int, hashlib._Hash] = field(default_factory=dict)
    last: int = 0  # the largest offset in states, 0 if none
    # An earlier attempt had a write refused here: the server's temporary file may have a gap
    # from this offset on, however its sampled blocks compare. None when none was refused.
    refused_at: int | None = None

    def refused(self, offset: int) -> None:
        self.refused_at = offset if self.refused_at is None else min(self.refused_at, offset)

    def record(self, offset: int, hasher: hashlib._Hash) -> None:
        """Keep a copy of ``hasher`` (which has seen ``offset`` bytes) if one is due."""
        if offset - self.last >= self.every:
            self.states[offset] = hasher.copy()
            self.last = offset

    def best(self, offset: int) -> tuple[int, hashlib._Hash]:
        """The latest state at or before ``offset`` (a copy), or a new hasher at 0."""
        usable = [at for at in self.states if at <= offset]
        if not usable:
            return 0, hashlib.sha256()
        at = max(usable)
        return at, self.states[at].copy()


class PrefixHashes:
    """sha256 states of the first bytes of recently uploaded files, by offset.

    A file is identified by its path, device, inode, size and mtime: the same key only while
    the file is unchanged, which the engine checks before every attempt.
    """

    def __init__(self) -> None:
        self._files: OrderedDict[FileKey, Checkpoints] = OrderedDict()

    def recorder(self, key: FileKey, size: int) -> Checkpoints:
        """The checkpoints of ``key``, made if new; the file becomes the most recent."""
        found = self._files.get(key)
        if found is None:
            every = max(CHECKPOINT_BYTES, -(-size // MAX_CHECKPOINTS))
            found = self._files[key] = Checkpoints(every)
            while len(self._files) > KEPT_FILES:
                self._files.popitem(last=False)
        self._files.move_to_end(key)
        return found

    def forget(self, key: FileKey) -> None:
        self._files.pop(key, None)
