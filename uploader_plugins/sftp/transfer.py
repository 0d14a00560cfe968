"""Phase 2 over SFTP: stream each file to a temporary name, check it, rename it into place.

Why it is written this way:

- Nobody on the server may ever see a partial file under its final name, so each file goes to
  ``.<name>.part`` beside its final name and is renamed once complete. The temporary name is
  deterministic: a later attempt overwrites it, and a resuming upload can find it.
- The rename is atomic where the server offers ``posix-rename@openssh.com``. Servers without
  it get a plain SFTP rename, and servers that refuse to rename onto an existing file (the
  final file can exist from an attempt that crashed after its rename) get remove + rename:
  between the two the final name is briefly absent, never partial.
- Speed: writes are pipelined (no round trip per write) and sized so that each SFTP write
  request fits in one SSH channel packet. paramiko's own 32 KiB requests overflow the
  server's 32 KiB packet by the request header, which doubles the packets sent and costs
  about a third of the throughput.
- Correctness of pipelining: paramiko checks the acknowledgements of pipelined writes only
  from time to time and never at close, so the last write of each file is sent unpipelined,
  which makes paramiko wait for, and check, every acknowledgement still pending. The size of
  the temporary file is then compared with what was sent.
- Memory stays flat whatever the size: one reusable buffer of about 1 MiB, and the server's
  channel window bounds what is in flight.
"""

from __future__ import annotations

import hashlib
import io
import logging
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Protocol, cast

import paramiko

from uploader_core.errors import EndpointUnavailable, TransientError
from uploader_core.job import Job, ProgressCallback, TransferReceipt

from .connection import Interrupter, Session
from .failures import RemoteOp, is_sftp_status, translate
from .settings import SftpSettings, setting

log = logging.getLogger(__name__)

DESTINATION = "sftp"

# An SFTP WRITE request: length, type, id, handle (length + at most 256 bytes by the
# protocol), offset, data length. paramiko keeps 64 bytes of each channel packet spare.
_WRITE_HEADER = 4 + 1 + 4 + (4 + 256) + 8 + 4
_CHANNEL_SPARE = 64
_MAX_WRITE = 32768  # what paramiko sends at most per request, and what every server accepts
_READ_SIZE = 1 << 20


class _Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


def temporary_name(name: str) -> str:
    """The deterministic name a file has on the server until it is complete."""
    return f".{name}.part"


class Transfer:
    """Uploads the two files of one job over one session."""

    def __init__(self, session: Session, settings: SftpSettings, interrupter: Interrupter,
                 progress: ProgressCallback, total: int) -> None:
        self._session = session
        self._settings = settings
        self._interrupter = interrupter
        self._progress = progress
        self._total = total
        self._done = 0

    def run(self, job: Job) -> TransferReceipt:
        video_hash = hashlib.sha256()
        with job.open_video() as video:
            video_path = self._send(cast(_Readable, video), job.video_size, f"{job.event_id}.mp4",
                                    "remote_video_dir", video_hash)
        json_path = self._send(io.BytesIO(job.document), job.json_size,
                               f"{job.event_id}.json", "remote_json_dir", None)
        return TransferReceipt(destination=DESTINATION, remote_video_path=video_path,
                               remote_json_path=json_path,
                               video_sha256=video_hash.hexdigest())

    # --- one file

    def _send(self, source: _Readable, size: int, name: str, dir_key: str,
              hasher: hashlib._Hash | None) -> str:
        directory = getattr(self._settings, dir_key)
        dir_setting = setting(dir_key)
        temporary = posixpath.join(directory, temporary_name(name))
        final = posixpath.join(directory, name)
        sftp = self._session.sftp
        where = self._settings.address

        with self._op(RemoteOp(f"creating {temporary}", dir_setting,
                               missing=f"remote directory {directory} does not exist on "
                                       f"{where}")):
            remote = sftp.open(temporary, "wb")
        try:
            self._stream(source, size, name, remote, temporary, dir_setting, hasher)
            with self._op(RemoteOp(f"closing {temporary}", dir_setting)):
                remote.close()
        except BaseException:
            # Leave the partial file: it is under its temporary name, and harmless. Close it
            # only while the connection is healthy (an interrupted job, a local read error);
            # a broken connection is dropped instead of waited on.
            if self._session.alive() and not self._interrupter.requested:
                with suppress(Exception):
                    remote.close()
            raise

        with self._op(RemoteOp(f"checking the size of {temporary}", dir_setting)):
            remote_size = sftp.stat(temporary).st_size
        if remote_size != size:
            raise TransientError(
                f"{temporary} has {remote_size} bytes on the server after {size} were sent; "
                "it will be uploaded again",
                endpoint=DESTINATION,
            )
        self._rename(temporary, final, dir_setting)
        log.debug("uploaded %s (%d bytes)", final, size)
        return final

    def _stream(self, source: _Readable, size: int, name: str, remote: paramiko.SFTPFile,
                temporary: str, dir_setting: str, hasher: hashlib._Hash | None) -> None:
        piece = self._write_size()
        buffer = bytearray(piece * max(1, _READ_SIZE // piece))
        view = memoryview(buffer)
        remote.set_pipelined(True)
        write_op = RemoteOp(f"writing {temporary}", dir_setting, failure=EndpointUnavailable,
                            hint=" (is the server's disk full?)")
        sent = 0
        while sent < size:
            try:
                got = source.readinto(view[: min(len(buffer), size - sent)]) or 0
            except OSError as exc:
                raise TransientError(f"cannot read {name}: {exc.strerror or exc}") from exc
            if got == 0:
                raise TransientError(f"{name} is shorter than when it was validated "
                                     f"({sent} of {size} bytes); it will be retried")
            data = view[:got]
            if hasher is not None:
                hasher.update(data)
            last = sent + got >= size
            with self._op(write_op):
                for start in range(0, got, piece):
                    end = min(start + piece, got)
                    if last and end == got:
                        # Unpipelined: waits for and checks every pending acknowledgement.
                        remote.set_pipelined(False)
                    remote.write(data[start:end])
            sent += got
            self._done += got
            self._progress(self._done, self._total)

    def _write_size(self) -> int:
        channel = self._session.sftp.get_channel()
        packet = channel.out_max_packet_size if channel is not None else _MAX_WRITE
        return max(1024, min(_MAX_WRITE, packet - _CHANNEL_SPARE - _WRITE_HEADER))

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
