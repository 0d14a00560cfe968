"""Phase 2 over SFTP: stream each file to a temporary name, check it, rename it into place.

Why it is written this way:

- Nobody on the server may ever see a partial file under its final name, so each file goes to
  ``.<name>.part`` beside its final name and is renamed once complete. The temporary name is
  deterministic: a later attempt overwrites it, and a resuming upload can find it.
- The rename is atomic where the server offers ``posix-rename@openssh.com``. Servers without
  it get a plain SFTP rename, and servers that refuse to rename onto an existing file (the
  final file can exist from an attempt that crashed after its rename) get remove + rename:
  between the two the final name is briefly absent, never partial.
- Speed: every request of an upload is pipelined (:mod:`.pipeline`). A video's stat (is
  there a partial file to continue?) goes out with its open, which does not truncate; the
  size query and the close go out behind the last write. A file then costs three round trips
  (open, finish, rename) whatever its size. Writes are as large as the server's
  ``limits@openssh.com`` allows, up to about 128 KiB in whole channel packets and whole
  pages; a server that gives no limit gets requests that fit one 32 KiB channel packet
  (paramiko's own 32 KiB requests overflow it by the request header, doubling the packets).
- Correctness of pipelining: the answer to every write is read and checked, those in as the
  upload goes (a full disk stops it early), the rest before the size and the close are
  looked at. The size the server reports for the open file is compared with what was sent,
  and the file is renamed only once the close succeeded.
- Memory stays flat whatever the size: one reusable buffer of about 1 MiB, and the server's
  channel window bounds what is in flight.
- Resuming: a video whose temporary file is already on the server (an earlier attempt was cut)
  continues from that file's size, once a sample of its blocks read back matches the local
  video (:mod:`.resume`); otherwise, or when the temporary file is larger than the video, it
  is written again from the start. The temporary name being deterministic is what makes this
  possible. The JSON document is small and always written whole.
- The bandwidth cap (:mod:`.throttle`) is applied per write request, and each read from the
  local file is then kept to about a second's worth, so progress is reported at least that
  often on a slow cap.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Protocol, cast

from uploader_core.errors import EndpointUnavailable, TransientError
from uploader_core.job import Job, ProgressCallback, TransferReceipt

from .connection import Interrupter, Session
from .failures import RemoteOp, is_sftp_status, translate
from .pipeline import Pipeline, RemoteFile
from .resume import Checkpoints, FileKey, PrefixHashes, sample_blocks
from .settings import SftpSettings, setting
from .throttle import RateLimiter

log = logging.getLogger(__name__)

DESTINATION = "sftp"

# An SFTP WRITE request: length, type, id, handle (length + at most 256 bytes by the
# protocol), offset, data length. paramiko keeps 64 bytes of each channel packet spare.
_WRITE_HEADER = 4 + 1 + 4 + (4 + 256) + 8 + 4
_CHANNEL_SPARE = 64
_MAX_WRITE = 32768  # what every server accepts, and what a server that gives no limit gets
# Larger writes mean fewer requests and answers; beyond about this, throughput drops again.
_TARGET_WRITE = 128 * 1024
_PAGE = 4096
_READ_SIZE = 1 << 20


class _Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class _Video(_Readable, Protocol):
    def fileno(self) -> int: ...
    def seek(self, offset: int, whence: int = ..., /) -> int: ...


def temporary_name(name: str) -> str:
    """The deterministic name a file has on the server until it is complete."""
    return f".{name}.part"


class Transfer:
    """Uploads the two files of one job over one session."""

    def __init__(self, session: Session, settings: SftpSettings, interrupter: Interrupter,
                 progress: ProgressCallback, total: int, *, limiter: RateLimiter,
                 hashes: PrefixHashes) -> None:
        self._session = session
        self._settings = settings
        self._interrupter = interrupter
        self._progress = progress
        self._total = total
        self._limiter = limiter
        self._hashes = hashes
        self._done = 0

    def run(self, job: Job) -> TransferReceipt:
        with job.open_video() as opened:
            video = cast(_Video, opened)
            st = os.fstat(video.fileno())
            key: FileKey = (str(job.video_path), st.st_dev, st.st_ino, st.st_size,
                            st.st_mtime_ns)
            video_path, video_hash = self._send(video, job.video_size, f"{job.event_id}.mp4",
                                                "remote_video_dir", resume=key)
        self._hashes.forget(key)
        json_path, _ = self._send(io.BytesIO(job.document), job.json_size,
                                  f"{job.event_id}.json", "remote_json_dir", resume=None)
        assert video_hash is not None
        return TransferReceipt(destination=DESTINATION, remote_video_path=video_path,
                               remote_json_path=json_path,
                               video_sha256=video_hash.hexdigest())

    # --- one file

    def _send(self, source: _Readable, size: int, name: str, dir_key: str,
              resume: FileKey | None) -> tuple[str, hashlib._Hash | None]:
        """Upload ``source`` as ``name``; return its final path and, when resumable, its hash.

        ``resume`` identifies a local file (then ``source`` is a :class:`_Video`) whose
        temporary remote file may be continued; None writes the file whole, unhashed.
        """
        directory = getattr(self._settings, dir_key)
        dir_setting = setting(dir_key)
        temporary = posixpath.join(directory, temporary_name(name))
        final = posixpath.join(directory, name)
        where = self._settings.address

        piece = self._write_size()
        buffer = bytearray(piece * max(1, _READ_SIZE // piece))
        pipeline = Pipeline(self._session.sftp)
        create_op = RemoteOp(f"creating {temporary}", dir_setting,
                             missing=f"remote directory {directory} does not exist on {where}")
        checkpoints: Checkpoints | None = None
        offset = 0
        if resume is None:
            with self._op(create_op):
                remote = RemoteFile(pipeline,
                                    pipeline.handle(pipeline.open_for_writing(temporary,
                                                                              truncate=True)))
        else:
            checkpoints = self._hashes.recorder(resume, size)
            # One round trip: the size of what an earlier attempt left, and a handle to write
            # that file without truncating it (it may be continued).
            with self._op(RemoteOp(f"looking at {temporary}", dir_setting)):
                stat_request = pipeline.stat(temporary)
                open_request = pipeline.open_for_writing(temporary, truncate=False)
            try:
                partial = self._partial_size(pipeline, stat_request, temporary, dir_setting)
            except BaseException:
                self._abandon_open(pipeline, open_request)
                raise
            with self._op(create_op):
                remote = RemoteFile(pipeline, pipeline.handle(open_request))
        hasher: hashlib._Hash | None = None
        try:
            if resume is not None:
                offset = self._resume_point(cast(_Video, source), size, temporary, dir_setting,
                                            partial)
                if partial > size:
                    with self._op(RemoteOp(f"emptying {temporary}", dir_setting)):
                        remote.truncate()
            if checkpoints is not None:
                hasher = (self._hash_prefix(cast(_Video, source), offset, checkpoints,
                                            memoryview(buffer))
                          if offset else hashlib.sha256())
            if offset:
                self._done += offset
                self._progress(self._done, self._total)
            self._stream(source, size, offset, name, remote, temporary, dir_setting, hasher,
                         checkpoints, piece, buffer)
            size_op = RemoteOp(f"checking the size of {temporary}", dir_setting)
            with self._op(size_op):
                size_request, close_request = remote.finish()
            with self._op(self._write_op(temporary, dir_setting)):
                remote.check_writes()
            with self._op(size_op):
                remote_size = pipeline.attributes(size_request).st_size
            with self._op(RemoteOp(f"closing {temporary}", dir_setting)):
                pipeline.status(close_request)
        except BaseException:
            # Leave the partial file: it is under its temporary name, harmless, and the next
            # attempt resumes it. Close it only while the connection is healthy (an
            # interrupted job, a local read error); a broken connection is dropped instead of
            # waited on.
            if self._session.alive() and not self._interrupter.requested:
                with suppress(Exception):
                    remote.close()
            raise

        if remote_size != size:
            raise TransientError(
                f"{temporary} has {remote_size} bytes on the server after {size} were sent; "
                "it will be uploaded again",
                endpoint=DESTINATION,
            )
        self._rename(temporary, final, dir_setting)
        if offset:
            log.debug("uploaded %s (%d bytes, %d of them resumed)", final, size, offset)
        else:
            log.debug("uploaded %s (%d bytes)", final, size)
        return final, hasher

    @staticmethod
    def _write_op(temporary: str, dir_setting: str) -> RemoteOp:
        return RemoteOp(f"writing {temporary}", dir_setting, failure=EndpointUnavailable,
                        hint=" (is the server's disk full?)")

    def _stream(self, source: _Readable, size: int, sent: int, name: str,
                remote: RemoteFile, temporary: str, dir_setting: str,
                hasher: hashlib._Hash | None, checkpoints: Checkpoints | None, piece: int,
                buffer: bytearray) -> None:
        """Send ``source`` from byte ``sent`` (where it is positioned) to ``size``.

        Every write is pipelined; the answers that have come in are checked as it goes, the
        rest by the caller.
        """
        view = memoryview(buffer)
        limiter = self._limiter
        write_op = self._write_op(temporary, dir_setting)
        while sent < size:
            want = min(len(buffer), size - sent)
            rate = limiter.rate
            if rate:
                # About a second's worth per read, so that progress keeps coming on a slow cap.
                want = min(want, max(piece, int(rate) // piece * piece))
            got = self._read(source, view[:want], name, sent, size)
            data = view[:got]
            if hasher is not None:
                hasher.update(data)
            with self._op(write_op):
                for start in range(0, got, piece):
                    end = min(start + piece, got)
                    if limiter.rate:
                        limiter.pace(end - start)
                        self._interrupter.check(f"uploading {name}")
                    remote.write(sent + start, data[start:end])
            sent += got
            if checkpoints is not None and hasher is not None:
                checkpoints.record(sent, hasher)
            self._done += got
            self._progress(self._done, self._total)

    @staticmethod
    def _read(source: _Readable, into: memoryview, name: str, sent: int, size: int) -> int:
        try:
            got = source.readinto(into) or 0
        except OSError as exc:
            raise TransientError(f"cannot read {name}: {exc.strerror or exc}") from exc
        if got == 0:
            raise TransientError(f"{name} is shorter than when it was validated "
                                 f"({sent} of {size} bytes); it will be retried")
        return got

    # --- resuming

    def _partial_size(self, pipeline: Pipeline, request: int, temporary: str,
                      dir_setting: str) -> int:
        """The answer to a stat of the temporary file: its size, 0 if there is none."""
        try:
            return pipeline.attributes(request).st_size or 0
        except FileNotFoundError:
            return 0
        except Exception as exc:
            raise self._translate(exc, RemoteOp(f"looking at {temporary}", dir_setting)) \
                from exc

    def _abandon_open(self, pipeline: Pipeline, request: int) -> None:
        """Close what an open sent without waiting gave, if it gave a handle; never raises."""
        if not self._session.alive() or self._interrupter.requested:
            return
        with suppress(Exception):
            RemoteFile(pipeline, pipeline.handle(request)).close()

    def _resume_point(self, video: _Video, size: int, temporary: str, dir_setting: str,
                      partial: int) -> int:
        """How many bytes of the video the server's temporary file (``partial`` bytes) already
        holds, or 0.

        0 when there is no such file, when it is larger than the video, when it cannot be
        read back, or when a sampled block differs from the local video.
        """
        session = self._session
        if partial <= 0:
            return 0
        if partial > size:
            log.info("%s on %s has %d bytes, more than the %d of the video; uploading it "
                     "again from the start", temporary, self._settings.address, partial, size)
            return 0
        blocks = sample_blocks(partial)
        try:
            with session.sftp.open(temporary, "rb") as remote:
                remote_blocks = list(remote.readv(blocks))
        except Exception as exc:
            # Refused (a write-only account), or shorter than it was a moment ago: start over.
            if is_sftp_status(exc, session) or (isinstance(exc, EOFError) and session.alive()):
                log.info("cannot read back %s on %s (%s); uploading it again from the start",
                         temporary, self._settings.address, exc)
                return 0
            raise self._translate(exc, RemoteOp(f"reading back {temporary}", dir_setting)) \
                from exc
        fd = video.fileno()
        for (at, length), remote_data in zip(blocks, remote_blocks, strict=True):
            try:
                local = os.pread(fd, length, at)
            except OSError as exc:
                raise TransientError(f"cannot read the video: {exc.strerror or exc}") from exc
            if remote_data != local:
                log.warning("%s on %s differs from the local video in bytes %d-%d; uploading "
                            "it again from the start", temporary, self._settings.address, at,
                            at + length - 1)
                return 0
        log.info("resuming %s on %s at byte %d of %d", temporary, self._settings.address,
                 partial, size)
        return partial

    def _hash_prefix(self, video: _Video, offset: int, checkpoints: Checkpoints,
                     view: memoryview) -> hashlib._Hash:
        """The hash of the video's first ``offset`` bytes, read locally; leaves it there."""
        at, hasher = checkpoints.best(offset)
        video.seek(at)
        while at < offset:
            self._interrupter.check("hashing the video")
            got = self._read(video, view[: min(len(view), offset - at)], "the video", at,
                             offset)
            hasher.update(view[:got])
            at += got
            checkpoints.record(at, hasher)
        return hasher

    def _write_size(self) -> int:
        """The data of one write request: as many whole channel packets as the server's
        write limit allows, up to about ``_TARGET_WRITE``; one packet without a limit."""
        session = self._session
        if session.write_limit is None:
            with self._op(RemoteOp(f"asking {self._settings.address} for its limits")):
                session.write_limit = Pipeline(session.sftp).write_limit() or _MAX_WRITE
            log.debug("%s accepts writes of %d bytes", self._settings.address,
                      session.write_limit)
        channel = session.sftp.get_channel()
        packet = channel.out_max_packet_size if channel is not None else _MAX_WRITE
        payload = packet - _CHANNEL_SPARE
        limit = session.write_limit
        packets = max(1, min(limit, _TARGET_WRITE) // payload)
        piece = min(limit, packets * payload - _WRITE_HEADER)
        if packets > 1:
            # Whole pages: the server writes each request at an offset that is a multiple of it.
            piece -= piece % _PAGE
        return max(1024, piece)

    # --- into place

    def _rename(self, temporary: str, final: str, dir_setting: str) -> None:
        session = self._session
        sftp = session.sftp
        op = RemoteOp(f"renaming {temporary} to {final}", dir_setting)
        if session.posix_rename is not False:
            try:
                sftp.posix_rename(temporary, final)
            except Exception as exc:
                if not is_sftp_status(exc, session):
                    raise self._translate(exc, op) from exc
                # Not offered ("Operation unsupported"), or denied by the server's policy:
                # a plain rename says whether renaming itself is the problem.
                log.debug("posix-rename refused by %s (%s); using a plain rename",
                          self._settings.address, exc)
            else:
                session.posix_rename = True
                return
        try:
            sftp.rename(temporary, final)
        except Exception as exc:
            # Only a bare "Failure" can mean "the target exists"; permission denied and no
            # such file are reported as they are, and nothing is removed for them.
            refused = is_sftp_status(exc, session) and getattr(exc, "errno", None) is None
            if not refused or not self._exists(final, dir_setting):
                raise self._translate(exc, op) from exc
            # The server does not rename onto an existing file: make room first.
            log.debug("%s refuses to rename onto %s; removing it first",
                      self._settings.address, final)
            with self._op(RemoteOp(f"removing the earlier {final}", dir_setting)):
                sftp.remove(final)
            with self._op(op):
                sftp.rename(temporary, final)
        if session.posix_rename is None:
            session.posix_rename = False
            log.info("%s does not do posix-rename; using plain rename", self._settings.address)

    def _exists(self, path: str, dir_setting: str) -> bool:
        try:
            self._session.sftp.stat(path)
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise self._translate(exc, RemoteOp(f"looking at {path}", dir_setting)) from exc
        return True

    # --- errors

    def _translate(self, exc: BaseException, op: RemoteOp) -> Exception:
        return translate(exc, op, self._session, self._interrupter, self._settings.timeout)

    @contextmanager
    def _op(self, op: RemoteOp) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            error = self._translate(exc, op)
            if error is exc:
                raise
            raise error from exc
