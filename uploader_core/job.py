"""What a job is, the phases it goes through and what can become of it."""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import PermanentJobError, TransientError


class Phase(enum.Enum):
    """The steps of one job, in order."""

    READ = "read"  # read and validate the local package
    PRE_UPLOAD = "pre_upload"  # plugins may veto or postpone
    STORE_METADATA = "store_metadata"  # phase 1: idempotent record of the metadata
    TRANSFER = "transfer"  # phase 2: both files to the remote store
    MARK_COMPLETED = "mark_completed"  # phase 3: the record says where the files are
    ARCHIVE = "archive"  # phase 4: local files into the archive
    POST_ARCHIVE = "post_archive"  # plugins are told; nothing can be undone any more


class Outcome(enum.Enum):
    """What one pass did with one job."""

    COMPLETED = "completed"  # uploaded, recorded and archived
    RETRY = "retry"  # left in place; a later pass tries again
    QUARANTINED = "quarantined"  # moved to the failed directory with a reason
    WAITING = "waiting"  # not eligible yet: still settling, video not there, or backing off


class RecordState(enum.Enum):
    """What a metadata store knows of an event, returned by ``store_metadata``."""

    PENDING = "pending"  # recorded; the files still have to go up
    COMPLETED = "completed"  # already completed with this same content: only archive is left


ProgressCallback = Callable[[int, int], None]
"""``progress(bytes_done, bytes_total)`` over the whole job's transfer (video and JSON
together); raises :class:`Interrupted` when the engine stops."""


@dataclass(frozen=True, kw_only=True)
class Job:
    """One event package, read and validated, handed to every phase hook.

    ``document`` holds the JSON file's bytes exactly as Module B wrote them; ``metadata`` is
    the parsed object. The video is never held in memory: open it with :meth:`open_video`.
    """

    event_id: str
    json_path: Path
    video_path: Path
    document: bytes
    metadata: Mapping[str, Any]
    json_sha256: str
    video_size: int
    video_mtime_ns: int

    @property
    def json_size(self) -> int:
        return len(self.document)

    def open_video(self) -> IO[bytes]:
        """Open the video for reading, refusing anything that changed since validation.

        Never follows a symlink, never blocks on a FIFO. Raises :class:`TransientError` when
        the file changed (Module B still writing) and :class:`PermanentJobError` when it is no
        longer a regular file.
        """
        try:
            fd = os.open(self.video_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError as exc:
            raise TransientError(f"{self.video_path.name} disappeared during the job") from exc
        except OSError as exc:
            raise PermanentJobError(f"cannot open video {self.video_path.name}: {exc}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise PermanentJobError(f"video {self.video_path.name} is not a regular file")
            if st.st_size != self.video_size or st.st_mtime_ns != self.video_mtime_ns:
                raise TransientError(
                    f"video {self.video_path.name} changed since it settled "
                    f"({self.video_size} -> {st.st_size} bytes); it will be retried"
                )
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise


UpcomingJob = Callable[[], Job | None]
"""``upcoming()``, given to ``transfer_files``: the job its worker will most likely transfer
next, once that job is recorded; ``None`` until then, and for a pass's last job."""


def nothing_upcoming() -> Job | None:
    """An :data:`UpcomingJob` that never knows of a next job."""
    return None


@dataclass(frozen=True, kw_only=True)
class TransferReceipt:
    """Where a transfer plugin put the files of one job, returned by ``transfer_files``."""

    destination: str  # the plugin's name for the remote store, e.g. "sftp"
    remote_video_path: str
    remote_json_path: str
    video_sha256: str  # of the bytes actually sent


@dataclass(frozen=True, kw_only=True)
class JobResult:
    """What happened to one job in one pass."""

    event_id: str
    outcome: Outcome
    phase: Phase | None = None  # the phase that failed, for RETRY and QUARANTINED
    reason: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """One line of ``uploader check``."""

    name: str
    ok: bool
    detail: str
