"""A small blocking client of the control socket, for ``uploader status`` and the TUI.

It must not import Textual (or anything heavy): ``uploader status`` runs on small devices
and in scripts. One :class:`ControlConnection` is one socket; replies are matched to
requests by ``id``, and events of a subscription that arrive meanwhile are kept for
:meth:`ControlConnection.next_message`.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import itertools
import json
import os
import socket
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any

from .control_protocol import encode

DEFAULT_TIMEOUT = 10.0
START_HINT = "start it with: uploader run -c FILE"


class ControlError(Exception):
    """The engine refused a request, or the conversation with it failed."""


class EngineNotRunning(ControlError):
    """Nothing answers on the socket: the engine is not running (or uses another path)."""

    def __init__(self, path: Path, why: str, hint: str = START_HINT) -> None:
        super().__init__(f"the uploader is not running ({why}: {path}); {hint}")
        self.path = path
        self.hint = hint


class PermissionDenied(ControlError):
    """The socket exists but this user may not attach to it (mode 0660)."""


class ConnectionLost(ControlError):
    """The engine closed the connection (it stopped, or dropped this client)."""


class ControlConnection:
    """One connection to the engine's control socket."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT,
                 hint: str = START_HINT) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._buffer = bytearray()
        self._pending: deque[dict[str, Any]] = deque()  # messages read, not yet taken
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._sock.close()
            why = "no socket" if isinstance(exc, FileNotFoundError) else "nothing listens"
            raise EngineNotRunning(self.path, why, hint) from exc
        except PermissionError as exc:
            self._sock.close()
            raise PermissionDenied(f"permission denied on {self.path}: "
                                   f"{_who_may_attach(self.path)}") from exc
        except OSError as exc:
            self._sock.close()
            if exc.errno == errno.ENOTSOCK:
                raise EngineNotRunning(self.path, "not a socket", hint) from exc
            raise ControlError(f"cannot connect to {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ControlConnection:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def shutdown(self) -> None:
        """Wake up a thread blocked reading this connection (safe from any thread)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    # --- requests

    def send(self, cmd: str, **args: Any) -> int:
        """Send a request without waiting; its id, to recognise the reply."""
        request_id = next(self._ids)
        try:
            self._sock.settimeout(self.timeout)  # reads may have left it non-blocking
            self._sock.sendall(encode({"id": request_id, "cmd": cmd, **args}))
        except OSError as exc:
            raise ConnectionLost(f"lost the connection to the uploader: {exc}") from exc
        return request_id

    def request(self, cmd: str, **args: Any) -> Any:
        """Send a request and return its result; :class:`ControlError` if it failed.

        Events that arrive before the reply are kept for :meth:`next_message`.
        """
        request_id = self.send(cmd, **args)
        skipped: list[dict[str, Any]] = []
        try:
            while True:
                message = self._read_message(self.timeout)
                if message is None:
                    raise ControlError(f"the uploader did not answer {cmd!r} within "
                                       f"{self.timeout:g} s")
                if message.get("id") == request_id and "ok" in message:
                    return result_of(message)
                skipped.append(message)
        finally:
            self._pending.extendleft(reversed(skipped))

    def next_message(self, timeout: float | None) -> dict[str, Any] | None:
        """The next event or reply, or None if none came within ``timeout`` seconds."""
        if self._pending:
            return self._pending.popleft()
        return self._read_message(timeout)

    def _read_message(self, timeout: float | None) -> dict[str, Any] | None:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                try:
                    message = json.loads(line)
                except ValueError as exc:
                    raise ControlError(f"the uploader sent something that is not JSON: {exc}"
                                       ) from exc
                if isinstance(message, dict):
                    return message
                continue
            self._sock.settimeout(timeout)
            try:
                data = self._sock.recv(65536)
            except (TimeoutError, BlockingIOError):  # a timeout of 0 is a non-blocking read
                return None
            except OSError as exc:
                raise ConnectionLost(f"lost the connection to the uploader: {exc}") from exc
            if not data:
                raise ConnectionLost("the uploader closed the connection")
            self._buffer += data


def result_of(reply: dict[str, Any]) -> Any:
    """A reply's result, or :class:`ControlError` with the engine's message."""
    if reply.get("ok") is True:
        return reply.get("result")
    raise ControlError(str(reply.get("error") or "the uploader refused the request"))


def request(path: str | os.PathLike[str], cmd: str, timeout: float = DEFAULT_TIMEOUT,
            **args: Any) -> Any:
    """One request on a connection of its own."""
    with ControlConnection(path, timeout) as connection:
        return connection.request(cmd, **args)


def _who_may_attach(path: Path) -> str:
    try:
        gid = os.stat(path).st_gid
        group = grp.getgrgid(gid).gr_name
    except (OSError, KeyError):
        return "only the engine's user and group may attach"
    return f"only the engine's user and members of the group {group!r} may attach"
