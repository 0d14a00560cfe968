"""What the campaign writes into the pending directory: valid events and malformed packages.

Everything is derived from the seed: which packages exist, their ids, kinds, sizes, contents
and when each file is written. Valid events are written the way Module B writes them (the
video first, then the JSON that triggers the job), with a few variations Module B is allowed
(a byte-order mark, no ``eventId`` in the document, a video that arrives shortly after its
JSON). Malformed packages are taken from the bad-input catalogue of the unit tests; each has
the phrase its quarantine reason must contain.

While writing, the exact bytes of every file are hashed, so that the audit can later find
each one again (archive, quarantine, server) and prove that nothing was lost.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import random
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uploader_core.testing import sample_document

VALID_KINDS = ("plain", "bom", "no_event_id", "late_video", "large_document")
_VALID_WEIGHTS = (80, 5, 5, 5, 5)

MAX_METADATA_BYTES = 65536  # the campaign's engine runs with this cap (see campaign.py)
LATE_VIDEO_DELAY = (0.2, 1.5)  # seconds between a late video's JSON and the video itself


@dataclass(frozen=True)
class WrittenFile:
    """One file as the campaign wrote it: what it is and the hash of its bytes."""

    name: str
    kind: str  # "file", "symlink", "directory" or "fifo"
    sha256: str | None = None
    size: int = 0
    link_target: str | None = None


@dataclass
class Package:
    """One package of the plan. ``expected_reason`` is None for a valid event."""

    stem: str
    kind: str
    at: float  # seconds after the start of the campaign when its first file is written
    seed: int
    video_size: int = 0
    expected_reason: str | None = None
    files: dict[str, WrittenFile] = field(default_factory=dict)
    written: bool = False

    @property
    def valid(self) -> bool:
        return self.expected_reason is None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())


def video_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- writing primitives: each returns the record of what it wrote


def _write_file(path: Path, data: bytes) -> WrittenFile:
    # A plain open/write/close, as Module B does: the engine's settle time must cope with it.
    with open(path, "wb") as out:
        out.write(data)
    return WrittenFile(path.name, "file", _sha(data), len(data))


def _document(stem: str, rng: random.Random, **changes: Any) -> dict[str, Any]:
    doc = sample_document(stem, detections=rng.randint(0, 12))
    doc.update(changes)
    return doc


# --- malformed packages: (how to make it, the phrase the reason must contain, how to name it)

Step = Callable[[], None]
Maker = Callable[["Package", Path, Path, random.Random], list[tuple[float, Step]]]


def _video_then(document: Callable[[Package, random.Random], bytes]) -> Maker:
    """A normal video, then a JSON document whose bytes ``document`` makes."""
    def make(pkg: Package, pending: Path, secrets_dir: Path,
             rng: random.Random) -> list[tuple[float, Step]]:
        data = document(pkg, rng)

        def write() -> None:
            pkg.files[f"{pkg.stem}.mp4"] = _write_file(pending / f"{pkg.stem}.mp4",
                                                       video_bytes(pkg.seed, pkg.video_size))
            pkg.files[f"{pkg.stem}.json"] = _write_file(pending / f"{pkg.stem}.json", data)
        return [(0.0, write)]
    return make


def _raw(data: bytes) -> Callable[[Package, random.Random], bytes]:
    return lambda pkg, rng: data


def _doc(**changes: Any) -> Callable[[Package, random.Random], bytes]:
    return lambda pkg, rng: json.dumps(_document(pkg.stem, rng, **changes)).encode()


def _odd_video(kind: str) -> Maker:
    """The video is empty, a symlink to a secret, a directory or a FIFO; then a good JSON."""
    def make(pkg: Package, pending: Path, secrets_dir: Path,
             rng: random.Random) -> list[tuple[float, Step]]:
        def write() -> None:
            video = pending / f"{pkg.stem}.mp4"
            name = video.name
            if kind == "empty":
                pkg.files[name] = _write_file(video, b"")
            elif kind == "symlink":
                secret = secrets_dir / f"{pkg.stem}.secret"
                secret_data = f"secret of {pkg.stem}\n".encode()
                secret.write_bytes(secret_data)
                pkg.files[f"secret:{secret.name}"] = WrittenFile(
                    secret.name, "file", _sha(secret_data), len(secret_data))
                video.symlink_to(secret)
                pkg.files[name] = WrittenFile(name, "symlink", link_target=str(secret))
            elif kind == "directory":
                video.mkdir()
                pkg.files[name] = WrittenFile(name, "directory")
            elif kind == "fifo":
                os.mkfifo(video)
                pkg.files[name] = WrittenFile(name, "fifo")
            data = json.dumps(_document(pkg.stem, rng)).encode()
            pkg.files[f"{pkg.stem}.json"] = _write_file(pending / f"{pkg.stem}.json", data)
        return [(0.0, write)]
    return make


def _json_symlink(pkg: Package, pending: Path, secrets_dir: Path,
                  rng: random.Random) -> list[tuple[float, Step]]:
    def write() -> None:
        pkg.files[f"{pkg.stem}.mp4"] = _write_file(pending / f"{pkg.stem}.mp4",
                                                   video_bytes(pkg.seed, pkg.video_size))
        target = secrets_dir / f"{pkg.stem}.elsewhere.json"
        data = json.dumps({"eventId": pkg.stem}).encode()
        target.write_bytes(data)
        pkg.files[f"secret:{target.name}"] = WrittenFile(target.name, "file", _sha(data),
                                                         len(data))
        link = pending / f"{pkg.stem}.json"
        link.symlink_to(target)
        pkg.files[link.name] = WrittenFile(link.name, "symlink", link_target=str(target))
    return [(0.0, write)]


def _orphan(pkg: Package, pending: Path, secrets_dir: Path,
            rng: random.Random) -> list[tuple[float, Step]]:
    """A JSON whose video never comes."""
    data = json.dumps(_document(pkg.stem, rng)).encode()

    def write() -> None:
        pkg.files[f"{pkg.stem}.json"] = _write_file(pending / f"{pkg.stem}.json", data)
    return [(0.0, write)]


_DEEP = b'{"a":' * 300 + b"1" + b"}" * 300
_OVER_CAP = b'{"pad": "' + b"x" * (MAX_METADATA_BYTES + 4000) + b'"}'


def _stem(n: int) -> str:
    return f"bad{n:04d}"


MALFORMED: dict[str, tuple[Maker, str, Callable[[int], str]]] = {
    "truncated JSON": (_video_then(lambda p, r: f'{{"eventId": "{p.stem}", "site": "no'.encode()),
                       "not valid JSON", _stem),
    "JSON array": (_video_then(_raw(b"[1, 2, 3]")), "must hold a JSON object, not list", _stem),
    "JSON string": (_video_then(_raw(b'"just text"')), "must hold a JSON object, not str",
                    _stem),
    "JSON null": (_video_then(_raw(b"null")), "must hold a JSON object, not null", _stem),
    "invalid UTF-8": (_video_then(_raw(b'{"site": "caf\xe9"}')), "not valid UTF-8", _stem),
    "NUL character": (_video_then(_raw(b'{"site": "a\\u0000b"}')), "NUL character", _stem),
    "NaN": (_video_then(_raw(b'{"confidence": NaN}')), "NaN", _stem),
    "Infinity": (_video_then(_raw(b'{"confidence": -Infinity}')), "-Infinity", _stem),
    "duplicate keys": (_video_then(_raw(b'{"site": "a", "site": "b"}')), "key 'site' twice",
                       _stem),
    "mismatched eventId": (_video_then(lambda p, r: json.dumps(
        _document(p.stem, r, eventId=f"other-{p.stem}")).encode()), "does not match", _stem),
    "deep nesting": (_video_then(_raw(_DEEP)), "nested more than", _stem),
    "over the size cap": (_video_then(_raw(_OVER_CAP)),
                          f"over the limit of {MAX_METADATA_BYTES}", _stem),
    "empty video": (_odd_video("empty"), "is empty", _stem),
    "symlinked video": (_odd_video("symlink"), "symbolic link", _stem),
    "video is a directory": (_odd_video("directory"), "is a directory", _stem),
    "video is a FIFO": (_odd_video("fifo"), "not a regular file", _stem),
    "JSON is a symlink": (_json_symlink, "symbolic link", _stem),
    "id with a space": (_video_then(_doc()), "is not valid", lambda n: f"bad {n:04d}"),
    "id with unicode": (_video_then(_doc()), "is not valid", lambda n: f"\u00e9vt{n:04d}"),
    "id starting with a dash": (_video_then(_doc()), "is not valid", lambda n: f"-bad{n:04d}"),
    "id over 128 characters": (_video_then(_doc()), "is not valid",
                               lambda n: f"bad{n:04d}" + "x" * 130),
    "orphan JSON (video never comes)": (_orphan, "never appeared within", _stem),
}


# --- valid events


def _valid_steps(pkg: Package, pending: Path, rng: random.Random) -> list[tuple[float, Step]]:
    stem = pkg.stem
    if pkg.kind == "bom":
        data = b"\xef\xbb\xbf" + json.dumps(_document(stem, rng)).encode()
    elif pkg.kind == "no_event_id":
        doc = _document(stem, rng)
        del doc["eventId"]
        data = json.dumps(doc).encode()
    elif pkg.kind == "large_document":
        data = json.dumps(sample_document(stem, detections=rng.randint(100, 250))).encode()
    else:
        data = json.dumps(_document(stem, rng)).encode()

    def write_video() -> None:
        pkg.files[f"{stem}.mp4"] = _write_file(pending / f"{stem}.mp4",
                                               video_bytes(pkg.seed, pkg.video_size))

    def write_json() -> None:
        pkg.files[f"{stem}.json"] = _write_file(pending / f"{stem}.json", data)

    if pkg.kind == "late_video":  # Module B wrote the JSON first: the engine must wait
        return [(0.0, write_json), (rng.uniform(*LATE_VIDEO_DELAY), write_video)]

    def write_both() -> None:
        write_video()
        write_json()
    return [(0.0, write_both)]


def video_size(rng: random.Random, max_video: int) -> int:
    """Mostly small clips, some medium, a few large: the cuts then land inside transfers."""
    roll = rng.random()
    if roll < 0.70:
        size = rng.randint(1024, 64 * 1024)
    elif roll < 0.95:
        size = rng.randint(64 * 1024, 1024 * 1024)
    else:
        size = rng.randint(1024 * 1024, max_video)
    return max(1, min(size, max_video))


@dataclass
class Workload:
    """The seeded plan of every package, and the thread that writes it on schedule."""

    packages: list[Package]
    makers: dict[str, list[tuple[float, Step]]]

    @property
    def valid(self) -> list[Package]:
        return [p for p in self.packages if p.valid]

    @property
    def malformed(self) -> list[Package]:
        return [p for p in self.packages if not p.valid]

    def planned_remote_bytes(self) -> int:
        """An upper bound of what the valid events put on the server (4 KiB pages)."""
        total = 0
        for pkg in self.valid:
            json_guess = 64 * 1024 if pkg.kind == "large_document" else 8 * 1024
            total += -(-pkg.video_size // 4096) * 4096 + json_guess
        return total


def plan(seed: int, events: int, malformed: int, window: float, pending: Path,
         secrets_dir: Path, max_video: int) -> Workload:
    """Decide every package: ``events`` valid ones and ``malformed`` bad ones over ``window`` s.

    Every malformed kind appears at least once when ``malformed`` allows it.
    """
    rng = random.Random(f"workload:{seed}")
    packages: list[Package] = []
    for n in range(events):
        kind = rng.choices(VALID_KINDS, _VALID_WEIGHTS)[0]
        packages.append(Package(stem=f"ev{seed % 100000:05d}-{n:05d}", kind=kind,
                                at=rng.uniform(0, window), seed=rng.getrandbits(64),
                                video_size=video_size(rng, max_video)))
    kinds = list(MALFORMED)
    rng.shuffle(kinds)
    while len(kinds) < malformed:
        kinds.append(rng.choice(list(MALFORMED)))
    for n, kind in enumerate(kinds[:malformed]):
        _, reason, name = MALFORMED[kind]
        packages.append(Package(stem=name(n), kind=kind, at=rng.uniform(0, window),
                                seed=rng.getrandbits(64),
                                video_size=rng.randint(1024, 32 * 1024),
                                expected_reason=reason))
    packages.sort(key=lambda p: (p.at, p.stem))
    makers: dict[str, list[tuple[float, Step]]] = {}
    for pkg in packages:
        pkg_rng = random.Random(pkg.seed)
        if pkg.valid:
            makers[pkg.stem] = _valid_steps(pkg, pending, pkg_rng)
        else:
            maker = MALFORMED[pkg.kind][0]
            makers[pkg.stem] = maker(pkg, pending, secrets_dir, pkg_rng)
    return Workload(packages, makers)


class Writer(threading.Thread):
    """Writes the workload's files at their planned moments (relative to ``start()``)."""

    def __init__(self, workload: Workload, stop: threading.Event) -> None:
        super().__init__(name="chaos-writer", daemon=True)
        self.workload = workload
        self._stop_event = stop
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            self._write_all()
        except BaseException as exc:  # reported by the campaign, never swallowed
            self.error = exc
        finally:
            self.finished.set()

    def _write_all(self) -> None:
        queue: list[tuple[float, int, str, Step]] = []
        sequence = 0
        by_stem = {p.stem: p for p in self.workload.packages}
        for pkg in self.workload.packages:
            for offset, step in self.workload.makers[pkg.stem]:
                heapq.heappush(queue, (pkg.at + offset, sequence, pkg.stem, step))
                sequence += 1
        started = time.monotonic()
        while queue and not self._stop_event.is_set():
            when, _, stem, step = heapq.heappop(queue)
            delay = started + when - time.monotonic()
            if delay > 0 and self._stop_event.wait(delay):
                break
            step()
            if not any(item[2] == stem for item in queue):
                by_stem[stem].written = True


def describe(path: Path) -> WrittenFile | None:
    """What is at ``path`` now (never follows a link, never opens a FIFO); None if nothing."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return WrittenFile(path.name, "symlink", link_target=os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return WrittenFile(path.name, "directory")
    if not stat.S_ISREG(st.st_mode):
        return WrittenFile(path.name, "fifo")
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return WrittenFile(path.name, "file", digest.hexdigest(), st.st_size)
