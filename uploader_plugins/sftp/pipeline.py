"""SFTP requests sent without waiting for their answers, and a file written that way.

paramiko's :class:`~paramiko.SFTPFile` waits for one answer per operation (open, stat, close),
drops the answers of pipelined writes unless it is made to wait for each of them, and never
reports a failed close. An upload of many small files then spends most of its time waiting
for round trips. Here requests go out back to back and every answer is still read and
checked, in the order the requests were sent:

- :class:`Pipeline` sends requests through paramiko's own request numbering and collects the
  answers that arrive, whoever is waiting at the time (paramiko hands an answer to the object
  that registered its request number).
- :class:`RemoteFile` writes a file with pipelined requests, checks the answers already in as
  it goes (so a full disk stops the upload early), and sends the size query and the close
  behind the last write, so that finishing a file costs one round trip, not three.

The server answers requests in the order it received them (OpenSSH, asyncssh), so a size
query sent behind the writes sees all of them, and the close follows the size query.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any, cast

import paramiko
from paramiko.message import Message
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_FSETSTAT,
    CMD_FSTAT,
    CMD_HANDLE,
    CMD_OPEN,
    CMD_STAT,
    CMD_STATUS,
    CMD_WRITE,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
)

from . import fastsend

# Answers of writes not yet checked, at most: a bound on what waits in memory, far above
# what the server's channel window lets be in flight.
MAX_UNCHECKED_WRITES = 256

LIMITS_EXTENSION = "limits@openssh.com"

# A write request before its handle (length, type, request id, handle length), and after it
# (offset, data length).
_WRITE_START = struct.Struct(">IBII")
_WRITE_END = struct.Struct(">QI")


class Pipeline:
    """Requests on one SFTP session whose answers are collected as they come."""

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        # The request and answer machinery is paramiko's, not part of its typed interface.
        self._sftp = cast(Any, sftp)
        self._answers: dict[int, tuple[int, Message]] = {}

    def send(self, kind: int, *args: object) -> int:
        """Send one request; its number, for :meth:`wait`."""
        num: int = self._sftp._async_request(self, kind, *args)
        return num

    def send_write(self, handle: bytes, offset: int, data: memoryview) -> int:
        """Send one write request; its number, for :meth:`wait`.

        The same bytes paramiko would send, without its copies of the data (into a message,
        out of it, behind the length, and the remainder again after each channel packet):
        the header and the data go to :func:`.fastsend.send_all` as they are.
        """
        sftp = self._sftp
        with sftp._lock:
            num: int = sftp.request_number
            sftp._expecting[num] = self
            sftp.request_number = num + 1
        length = len(data)
        header = (_WRITE_START.pack(1 + 4 + 4 + len(handle) + 8 + 4 + length, CMD_WRITE, num,
                                    len(handle))
                  + handle + _WRITE_END.pack(offset, length))
        fastsend.send_all(sftp.sock, memoryview(header), data)
        return num

    def _async_response(self, kind: int, msg: Message, num: int) -> None:
        # Called by paramiko, on this thread, for each answer to a request of this pipeline.
        self._answers[num] = (kind, msg)

    def poll(self) -> None:
        """Take in the answers that have already arrived, without waiting."""
        sftp = self._sftp
        while sftp.sock.recv_ready():
            sftp._read_response()

    def answered(self, num: int) -> bool:
        return num in self._answers

    def wait(self, num: int) -> tuple[int, Message]:
        """The answer to request ``num``; reads (and hands on) every answer before it."""
        sftp = self._sftp
        while num not in self._answers:
            sftp._read_response()
        return self._answers.pop(num)

    def _raise_status(self, msg: Message) -> None:
        """Raise paramiko's own error for a status answer (nothing for "OK")."""
        self._sftp._convert_status(msg)

    def status(self, num: int) -> None:
        """Wait for a request answered by a status; raise if it is not "OK"."""
        self.check_status(*self.wait(num))

    def check_status(self, kind: int, msg: Message) -> None:
        """Raise unless an answer (from :meth:`wait`) is the status "OK"."""
        if kind != CMD_STATUS:
            raise paramiko.SFTPError("Expected status")
        self._raise_status(msg)

    def handle(self, num: int) -> bytes:
        """Wait for an open; its handle."""
        kind, msg = self.wait(num)
        if kind == CMD_STATUS:
            self._raise_status(msg)
        if kind != CMD_HANDLE:
            raise paramiko.SFTPError("Expected handle")
        return msg.get_binary()

    def attributes(self, num: int) -> paramiko.SFTPAttributes:
        """Wait for a stat; the attributes."""
        kind, msg = self.wait(num)
        if kind == CMD_STATUS:
            self._raise_status(msg)
        if kind != CMD_ATTRS:
            raise paramiko.SFTPError("Expected attributes")
        attributes: paramiko.SFTPAttributes = cast(Any, paramiko.SFTPAttributes)._from_msg(msg)
        return attributes

    # --- requests

    def stat(self, path: str) -> int:
        return self.send(CMD_STAT, path)

    def close(self, handle: bytes) -> int:
        return self.send(CMD_CLOSE, handle)

    def open_for_writing(self, path: str, *, truncate: bool) -> int:
        flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | (SFTP_FLAG_TRUNC if truncate else 0)
        return self.send(CMD_OPEN, path, flags, paramiko.SFTPAttributes())

    def write_limit(self) -> int | None:
        """The largest write the server accepts, if it says (``limits@openssh.com``).

        None when the server does not offer the extension, or gives no write limit; errors
        of the connection itself are raised.
        """
        kind, msg = self.wait(self.send(CMD_EXTENDED, LIMITS_EXTENSION))
        if kind != CMD_EXTENDED_REPLY:
            return None  # a status: "Operation unsupported", most likely
        msg.get_int64()  # max-packet-length
        msg.get_int64()  # max-read-length
        limit = msg.get_int64()  # max-write-length; 0: not said
        return limit or None


class RemoteFile:
    """A file open for writing on the server, written with pipelined requests."""

    def __init__(self, pipeline: Pipeline, handle: bytes) -> None:
        self._pipeline = pipeline
        self._handle = handle
        self._writes: deque[tuple[int, int]] = deque()  # (request, offset), unchecked
        self.close_sent = False
        # Where the first write the server answered with an error began. Writes sent behind
        # it may still have succeeded, leaving a gap in the file: it must not be continued
        # beyond this point.
        self.refused_at: int | None = None

    def truncate(self) -> None:
        """Empty the file (waits for the answer)."""
        attributes = paramiko.SFTPAttributes()
        attributes.st_size = 0
        self._pipeline.status(self._pipeline.send(CMD_FSETSTAT, self._handle, attributes))

    def write(self, offset: int, data: memoryview) -> None:
        """Send ``data`` for ``offset``; raise the error of any earlier write answered since."""
        pipeline = self._pipeline
        self._writes.append((pipeline.send_write(self._handle, offset, data), offset))
        pipeline.poll()
        writes = self._writes
        while writes and (pipeline.answered(writes[0][0])
                          or len(writes) > MAX_UNCHECKED_WRITES):
            self._check(*writes.popleft())

    def _check(self, num: int, offset: int) -> None:
        answer = self._pipeline.wait(num)  # a lost connection raises here, as it is
        try:
            self._pipeline.check_status(*answer)
        except BaseException:
            if self.refused_at is None:
                self.refused_at = offset
            raise

    def finish(self) -> tuple[int, int]:
        """Send a size query and the close behind the last write, without waiting.

        Returns their request numbers: check :meth:`check_writes` first, then the size
        (:meth:`Pipeline.attributes`), then the close (:meth:`Pipeline.status`).
        """
        size = self._pipeline.send(CMD_FSTAT, self._handle)
        close = self._pipeline.close(self._handle)
        self.close_sent = True
        return size, close

    def check_writes(self) -> None:
        """Wait for the answer to every write still unchecked; raise the first error."""
        while self._writes:
            self._check(*self._writes.popleft())

    def close(self) -> None:
        """Close the handle now, unless that was already sent; waits for the answer."""
        if self.close_sent:
            return
        self.close_sent = True
        self._pipeline.status(self._pipeline.close(self._handle))
