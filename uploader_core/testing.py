"""In-memory plugins for fast tests of the engine and of third-party plugins.

:class:`MemoryStore` keeps records as the PostgreSQL plugin would, :class:`MemoryRemote` keeps
files as the SFTP plugin would. Both can be told to fail a number of times with a given error,
so every failure path of the engine can be driven without a server. They prove nothing about
the real plugins, which have their own tests against real servers.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Field, Section
from .errors import PermanentJobError
from .job import Job, ProgressCallback, RecordState, TransferReceipt
from .package import read_package
from .plugin import hookimpl


@dataclass
class Record:
    event_id: str
    status: str
    metadata: dict[str, Any]
    json_sha256: str
    remote_video_path: str | None = None
    remote_json_path: str | None = None
    attempts: int = 1


@dataclass
class _Faults:
    queue: list[BaseException] = field(default_factory=list)

    def fail_next(self, *errors: BaseException) -> None:
        self.queue.extend(errors)

    def maybe_raise(self) -> None:
        if self.queue:
            raise self.queue.pop(0)


class MemoryStore:
    """A metadata store in a dict: ``records[event_id]``."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self.store_faults = _Faults()
        self.complete_faults = _Faults()
        self.confirm_faults = _Faults()
        self.calls: list[str] = []

    @hookimpl
    def store_metadata(self, job: Job) -> RecordState:
        self.calls.append(f"store:{job.event_id}")
        self.store_faults.maybe_raise()
        record = self.records.get(job.event_id)
        if record is None:
            self.records[job.event_id] = Record(job.event_id, "pending", dict(job.metadata),
                                                job.json_sha256)
            return RecordState.PENDING
        record.attempts += 1
        if record.status == "completed":
            if record.json_sha256 != job.json_sha256:
                raise PermanentJobError(f"{job.event_id} was already completed with "
                                        "different content")
            return RecordState.COMPLETED
        record.metadata, record.json_sha256 = dict(job.metadata), job.json_sha256
        return RecordState.PENDING

    @hookimpl
    def mark_completed(self, job: Job, receipts: Sequence[TransferReceipt]) -> None:
        self.calls.append(f"complete:{job.event_id}")
        self.complete_faults.maybe_raise()
        record = self.records[job.event_id]
        record.status = "completed"
        record.remote_video_path = receipts[0].remote_video_path
        record.remote_json_path = receipts[0].remote_json_path

    @hookimpl
    def confirm_completed(self, event_ids: Sequence[str]) -> set[str]:
        self.calls.append(f"confirm:{len(event_ids)}")
        self.confirm_faults.maybe_raise()
        return {event_id for event_id in event_ids
                if (record := self.records.get(event_id)) is not None
                and record.status == "completed"}


class MemoryRemote:
    """A remote file store in a dict: ``files[remote_path] = bytes``."""

    def __init__(self, video_dir: str = "/videos", json_dir: str = "/json") -> None:
        self.video_dir, self.json_dir = video_dir, json_dir
        self.files: dict[str, bytes] = {}
        self.faults = _Faults()
        self.uploads = 0
        self.interrupted = 0
        # Called with the job between reading the video and storing it: tests use it to act
        # while a transfer is in flight (stop the engine, change a file).
        self.during_transfer: Callable[[Job], None] | None = None

    @hookimpl
    def uploader_config_sections(self) -> dict[str, Section]:
        return {"memory_remote": {"note": Field(str, "", "free text, unused")}}

    @hookimpl
    def transfer_files(self, job: Job, progress: ProgressCallback) -> TransferReceipt:
        self.faults.maybe_raise()
        with job.open_video() as video:
            data = video.read()
        if self.during_transfer is not None:
            self.during_transfer(job)
        progress(len(data), job.video_size)
        video_path = f"{self.video_dir}/{job.event_id}.mp4"
        json_path = f"{self.json_dir}/{job.event_id}.json"
        self.files[video_path] = data
        self.files[json_path] = bytes(job.document)
        self.uploads += 1
        return TransferReceipt(destination="memory", remote_video_path=video_path,
                               remote_json_path=json_path,
                               video_sha256=hashlib.sha256(data).hexdigest())

    @hookimpl
    def uploader_interrupt(self) -> None:
        self.interrupted += 1


def memory_plugins() -> tuple[MemoryStore, MemoryRemote, list[tuple[str, object]]]:
    """A fresh pair and the ``plugins=`` argument for :class:`DataUploader`."""
    store, remote = MemoryStore(), MemoryRemote()
    return store, remote, [("memory_store", store), ("memory_remote", remote)]


def sample_document(event_id: str, detections: int = 2) -> dict[str, Any]:
    """A document shaped like Module B's (see the hand-off contract)."""
    return {
        "eventId": event_id,
        "deviceId": "cam03",
        "site": "north-meadow",
        "startTime": "2026-11-28T06:15:12.480Z",
        "endTime": "2026-11-28T06:15:31.020Z",
        "video": {"file": f"{event_id}.mp4", "codec": "h264", "width": 1920, "height": 1080,
                  "fps": 25, "durationSeconds": 18.54},
        "detections": [
            {"species": "red fox", "scientificName": "Vulpes vulpes",
             "confidence": round(0.5 + (i % 50) / 100, 2), "firstSeen": 1.2 + i,
             "lastSeen": 14.8 + i, "bbox": [0.41, 0.52, 0.18, 0.21]}
            for i in range(detections)
        ],
        "analyzer": {"name": "animal-analyzer", "version": "2.3.1",
                     "model": "wildcam-yolo-s-2026.09"},
        "environment": {"temperatureC": 3.5, "lightLevel": "night-ir"},
    }


def write_package(
    directory: Path,
    event_id: str,
    *,
    video: bytes | int = 1024,
    document: dict[str, Any] | bytes | None = None,
    age_seconds: float = 60.0,
) -> tuple[Path, Path]:
    """Write ``<event_id>.mp4`` then ``<event_id>.json`` as Module B does; return both paths.

    ``video`` is the content or a size (pseudo-random bytes, reproducible per event id).
    ``age_seconds`` back-dates both files so that they count as settled.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(video, int):
        seed = hashlib.sha256(event_id.encode()).digest()
        blocks, size = [], video
        while size > 0:
            seed = hashlib.sha256(seed).digest()
            blocks.append(seed * 64)
            size -= len(blocks[-1])
        video = b"".join(blocks)[: video]
    if document is None:
        document = sample_document(event_id)
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    video_path = directory / f"{event_id}.mp4"
    json_path = directory / f"{event_id}.json"
    video_path.write_bytes(video)
    json_path.write_bytes(data)
    if age_seconds:
        stamp = time.time() - age_seconds
        for path in (video_path, json_path):
            os.utime(path, (stamp, stamp))
    return video_path, json_path


def make_job(directory: Path, event_id: str, *, video: bytes | int = 1024,
             document: dict[str, Any] | bytes | None = None) -> Job:
    """Write a package with :func:`write_package` and read it back as the engine would."""
    video_path, json_path = write_package(directory, event_id, video=video, document=document)
    return read_package(json_path, video_path, max_metadata_bytes=64 * 1024 * 1024)
