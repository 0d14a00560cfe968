"""Phase 2 over SFTP: stream each file to a temporary name, check it, rename it into place.

Why it is written this way:

- Nobody on the server may ever see a partial file under its final name, so each file goes to
  ``.<name>.part`` beside its final name and is renamed once complete. The temporary name is
  deterministic: a later attempt overwrites it, and a resuming upload can find it.
- The rename is atomic where the server offers ``posix-rename@openssh.com``. Servers without
  it get a plain SFTP rename, and servers that refuse to rename onto an existing file (the
  final file can exist from an attempt that crashed after its rename) get remove + rename:
  between the two the final name is briefly absent, never partial.
- Speed: every request of an upload is pipelined (:mod:`.pipeline`). The video's stat (is
  there a partial file to continue?) goes out with its open, which does not truncate, and
  with the JSON's open; each file's size query and close go out behind its last write, and
  the JSON is written right behind the video. A job then costs four round trips (the opens,
  the finishes, and one rename per file) whatever its size. The renames are not pipelined:
  the JSON, which consumers take as the trigger, is renamed only once the video is in place.
  When the next job is known, its opens go out before this job waits for its last answers
  (:mod:`.lookahead`): three round trips per job in a run of jobs.
  Writes are as large as the server's ``limits@openssh.com`` allows, up to about 256 KiB in
  whole channel packets and whole pages; a server that gives no limit gets requests that fit
  one 32 KiB channel packet (paramiko's own 32 KiB requests overflow it by the request
  header, doubling the packets).
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
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Protocol, cast

from uploader_core.errors import EndpointUnavailable, TransientError
from uploader_core.job import Job, ProgressCallback, TransferReceipt, UpcomingJob

from .connection import Interrupter, Session
from .failures import RemoteOp, is_sftp_status, translate
from .fastsend import CHANNEL_SPARE
from .lookahead import Lookahead, Opening
from .pipeline import Pipeline, RemoteFile
from .resume import Checkpoints, FileKey, PrefixHashes, sample_blocks
from .settings import SftpSettings, setting
from .throttle import RateLimiter

log = logging.getLogger(__name__)

DESTINATION = "sftp"

# An SFTP WRITE request: length, type, id, handle (length + at most 256 bytes by the
# protocol), offset, data length. paramiko keeps 64 bytes of each channel packet spare.
_WRITE_HEADER = 4 + 1 + 4 + (4 + 256) + 8 + 4
_MAX_WRITE = 32768  # what every server accepts, and what a server that gives no limit gets
# Larger writes mean fewer requests, and fewer answers for the transport's thread to decrypt
# and parse; OpenSSH's server takes up to 256 KiB less a header (limits@openssh.com).
_TARGET_WRITE = 256 * 1024
_PAGE = 4096
_READ_SIZE = 1 << 20


class _Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class _Video(_Readable, Protocol):
    def fileno(self) -> int: ...
    def seek(self, offset: int, whence: int = ..., /) -> int: ...


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def safe_name(event_id: str) -> bool:
    """Whether an event id can name remote files (the engine checks ids first; this guards
    the remote paths anyway)."""
    return _SAFE_NAME.fullmatch(event_id) is not None


def temporary_name(name: str) -> str:
    """The deterministic name a file has on the server until it is complete."""
    return f".{name}.part"


@dataclass(frozen=True)
class _Destination:
    """One file of a job on the server: its directory, temporary name and final name."""

    name: str
    directory: str
    dir_setting: str
    temporary: str
    final: str

    def op(self, doing: str) -> RemoteOp:
        """An operation on the temporary file, for error messages: ``op("closing")``."""
        return RemoteOp(f"{doing} {self.temporary}", self.dir_setting)


class Transfer:
    """Uploads the two files of one job over one session."""

    def __init__(self, session: Session, settings: SftpSettings, interrupter: Interrupter,
                 progress: ProgressCallback, total: int, *, limiter: RateLimiter,
                 hashes: PrefixHashes, upcoming: UpcomingJob,
                 lookahead: Lookahead) -> None:
        self._session = session
        self._upcoming = upcoming
        self._lookahead = lookahead
        self._settings = settings
        self._interrupter = interrupter
        self._progress = progress
        self._total = total
        self._limiter = limiter
        self._hashes = hashes
        self._done = 0

    def run(self, job: Job) -> TransferReceipt:
        piece = self._write_size()
        buffer = bytearray(piece * max(1, _READ_SIZE // piece))
        video_file, json_file = self._destinations(job.event_id)
        with job.open_video() as opened:
            video = cast(_Video, opened)
            st = os.fstat(video.fileno())
            key: FileKey = (str(job.video_path), st.st_dev, st.st_ino, st.st_size,
                            st.st_mtime_ns)
            # One round trip opens both files: the size of what an earlier attempt left of
            # the video (it may be continued, so its open does not truncate), and the JSON's
            # temporary file, written whole. Sent ahead by the job before, if it could.
            opening = self._lookahead.take(job.event_id, self._session, video_file.temporary,
                                           json_file.temporary)
            if opening is None:
                with self._op(video_file.op("looking at")):
                    opening = Opening.send(job.event_id, self._session, video_file.temporary,
                                           json_file.temporary)
            pipeline, stat_request = opening.pipeline, opening.stat
            unanswered = [opening.video_open, opening.json_open]
            remotes: list[RemoteFile] = []
            try:
                partial = self._partial_size(pipeline, stat_request, video_file)
                video_remote = self._handle(pipeline, unanswered, video_file)
                remotes.append(video_remote)
                json_remote = self._handle(pipeline, unanswered, json_file)
                remotes.append(json_remote)
                hasher = self._send_video(video, job.video_size, key, partial, video_file,
                                          video_remote, piece, buffer)
                # The JSON goes out right behind the video, and both files' size queries and
                # closes are answered in one round trip.
                with self._op(video_file.op("closing")):
                    video_finish = video_remote.finish()
                self._stream(io.BytesIO(job.document), job.json_size, 0, json_remote, json_file,
                             None, None, piece, buffer)
                with self._op(json_file.op("closing")):
                    json_finish = json_remote.finish()
                self._send_ahead(job)
                self._check_complete(pipeline, video_remote, video_finish, video_file,
                                     job.video_size)
                self._check_complete(pipeline, json_remote, json_finish, json_file,
                                     job.json_size)
            except BaseException:
                if remotes and remotes[0].refused_at is not None:
                    self._hashes.recorder(key, job.video_size).refused(remotes[0].refused_at)
                # Leave the partial files: they are under their temporary names, harmless,
                # and the next attempt resumes the video. Close them only while the
                # connection is healthy (an interrupted job, a local read error); a broken
                # connection is dropped instead of waited on.
                if self._session.alive() and not self._interrupter.requested:
                    for request in unanswered:
                        self._abandon_open(pipeline, request)
                    for remote in remotes:
                        with suppress(Exception):
                            remote.close()
                raise
        self._hashes.forget(key)
        # The video is in place before its JSON, which consumers take as the trigger. The next
        # job may only have been recorded meanwhile: each wait is a chance to open its files.
        self._send_ahead(job)
        self._rename(video_file)
        self._send_ahead(job)
        self._rename(json_file)
        log.debug("uploaded %s and %s (%d and %d bytes)", video_file.final, json_file.final,
                  job.video_size, job.json_size)
        return TransferReceipt(destination=DESTINATION, remote_video_path=video_file.final,
                               remote_json_path=json_file.final,
                               video_sha256=hasher.hexdigest())

    # --- the next job

    def _send_ahead(self, job: Job) -> None:
        """Send the opens of the job expected next, once it is known (and only once)."""
        if self._lookahead.pending:
            return
        upcoming = self._upcoming()
        if upcoming is None or upcoming.event_id == job.event_id \
                or not safe_name(upcoming.event_id):
            return
        video_file, json_file = self._destinations(upcoming.event_id)
        try:
            self._lookahead.keep(Opening.send(upcoming.event_id, self._session,
                                              video_file.temporary, json_file.temporary))
        except Exception as exc:
            # The connection failed: this job's own answers will say so.
            log.debug("could not open the files of %s ahead: %s", upcoming.event_id, exc)

    # --- one file

    def _destinations(self, event_id: str) -> tuple[_Destination, _Destination]:
        return (self._destination(f"{event_id}.mp4", "remote_video_dir"),
                self._destination(f"{event_id}.json", "remote_json_dir"))

    def _destination(self, name: str, dir_key: str) -> _Destination:
        directory = getattr(self._settings, dir_key)
        return _Destination(name=name, directory=directory, dir_setting=setting(dir_key),
                            temporary=posixpath.join(directory, temporary_name(name)),
                            final=posixpath.join(directory, name))

    def _handle(self, pipeline: Pipeline, unanswered: list[int],
                file: _Destination) -> RemoteFile:
        """The open file the first request of ``unanswered`` gives (that answer is taken)."""
        request = unanswered.pop(0)
        with self._op(RemoteOp(f"creating {file.temporary}", file.dir_setting,
                               missing=f"remote directory {file.directory} does not exist "
                                       f"on {self._settings.address}")):
            return RemoteFile(pipeline, pipeline.handle(request))

    def _send_video(self, video: _Video, size: int, key: FileKey, partial: int,
                    file: _Destination, remote: RemoteFile, piece: int,
                    buffer: bytearray) -> hashlib._Hash:
        """Stream the video from where the server's temporary file can be continued, if it
        can; its hash."""
        checkpoints = self._hashes.recorder(key, size)
        offset = self._resume_point(video, size, file, partial)
        if checkpoints.refused_at is not None and offset > checkpoints.refused_at:
            log.info("%s: continuing at byte %d, where the server refused a write before, "
                     "not at %d", file.temporary, checkpoints.refused_at, offset)
            offset = checkpoints.refused_at
        if partial > size:
            with self._op(file.op("emptying")):
                remote.truncate()
        hasher = (self._hash_prefix(video, offset, checkpoints, memoryview(buffer))
                  if offset else hashlib.sha256())
        if offset:
            self._done += offset
            self._progress(self._done, self._total)
        self._stream(video, size, offset, remote, file, hasher, checkpoints, piece, buffer)
        if offset:
            log.debug("%s: %d of its %d bytes were resumed", file.final, offset, size)
        return hasher

    def _check_complete(self, pipeline: Pipeline, remote: RemoteFile, requests: tuple[int, int],
                        file: _Destination, size: int) -> None:
        """Wait for the answers to a file's writes, size query and close; raise unless every
        write succeeded and the server has exactly ``size`` bytes."""
        size_request, close_request = requests
        with self._op(self._write_op(file)):
            remote.check_writes()
        with self._op(file.op("checking the size of")):
            remote_size = pipeline.attributes(size_request).st_size
        with self._op(file.op("closing")):
            pipeline.status(close_request)
        if remote_size != size:
            raise TransientError(
                f"{file.temporary} has {remote_size} bytes on the server after {size} were "
                "sent; it will be uploaded again",
                endpoint=DESTINATION,
            )

    @staticmethod
    def _write_op(file: _Destination) -> RemoteOp:
        return RemoteOp(f"writing {file.temporary}", file.dir_setting,
                        failure=EndpointUnavailable, hint=" (is the server's disk full?)")

    def _stream(self, source: _Readable, size: int, sent: int, remote: RemoteFile,
                file: _Destination, hasher: hashlib._Hash | None,
                checkpoints: Checkpoints | None, piece: int, buffer: bytearray) -> None:
        """Send ``source`` from byte ``sent`` (where it is positioned) to ``size``.

        Every write is pipelined; the answers that have come in are checked as it goes, the
        rest by the caller.
        """
        view = memoryview(buffer)
        limiter = self._limiter
        name = file.name
        write_op = self._write_op(file)
        while sent < size:
            want = min(len(buffer), size - sent)
            rate = limiter.rate
            if rate:
                # About a second's worth per read, so that progress keeps coming on a slow cap.
                want = min(want, max(piece, int(rate) // piece * piece))
            got = self._read(source, view[:want], name, sent, size)
            data = view[:got]
            # Hashed from the read that is sent, so the video is read once. On this thread:
            # handing each read to a hashing thread and back cost more than the overlap saved
            # (10% more CPU for 1 MiB events, 7% more per GB and 12% less throughput for a
            # 1 GiB video, with AES and SHA instructions), and on a device that shares its CPU
            # with the analyzer there is no idle core to overlap on.
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

    def _partial_size(self, pipeline: Pipeline, request: int, file: _Destination) -> int:
        """The answer to a stat of the temporary file: its size, 0 if there is none."""
        try:
            return pipeline.attributes(request).st_size or 0
        except FileNotFoundError:
            return 0
        except Exception as exc:
            raise self._translate(exc, file.op("looking at")) from exc

    def _abandon_open(self, pipeline: Pipeline, request: int) -> None:
        """Close what an open sent without waiting gave, if it gave a handle; never raises."""
        if not self._session.alive() or self._interrupter.requested:
            return
        with suppress(Exception):
            RemoteFile(pipeline, pipeline.handle(request)).close()

    def _resume_point(self, video: _Video, size: int, file: _Destination, partial: int) -> int:
        """How many bytes of the video the server's temporary file (``partial`` bytes) already
        holds, or 0.

        0 when there is no such file, when it is larger than the video, when it cannot be
        read back, or when a sampled block differs from the local video.
        """
        session = self._session
        temporary = file.temporary
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
            raise self._translate(exc, file.op("reading back")) from exc
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
        payload = packet - CHANNEL_SPARE
        limit = session.write_limit
        packets = max(1, min(limit, _TARGET_WRITE) // payload)
        piece = min(limit, packets * payload - _WRITE_HEADER)
        if packets > 1:
            # Whole pages: the server writes each request at an offset that is a multiple of it.
            piece -= piece % _PAGE
        return max(1024, piece)

    # --- into place

    def _rename(self, file: _Destination) -> None:
        session = self._session
        temporary, final, dir_setting = file.temporary, file.final, file.dir_setting
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
