"""The control socket: lets ``uploader status``, ``uploader tui`` and scripts attach to a
running engine.

One thread runs a selector over the listening socket and every client, all non-blocking, so
that no client can hold anything up: the engine's thread only appends to a queue and pokes a
wake-up socket (see :meth:`ControlServer._on_event`), and a client that stops reading only
fills its own bounded backlog. The policy for a client that falls behind is to disconnect it
rather than drop some of its events: a subscriber that silently missed a "completed" event
would show a wrong picture forever, while a disconnected one reconnects and starts again from
a fresh snapshot.

The socket file is created with mode 0660 (the engine's user and group may attach) under a
temporary name and hard-linked into place, so that it never exists with wider permissions and
never replaces the socket of another engine that started at the same moment.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import logging
import os
import secrets
import selectors
import socket
import stat
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .control_protocol import (
    COMMANDS,
    MAX_PATH_BYTES,
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    encode,
    socket_path,
)
from .errors import ConfigurationError, PermanentJobError
from .monitor import DEFAULT_PENDING_LIMIT, Event
from .package import JSON_SUFFIX, check_event_id

if TYPE_CHECKING:
    from .engine import DataUploader

log = logging.getLogger("uploader.control")

SETTING = "uploader.control.socket_path"
# Unsent bytes a client may have before it is disconnected (subscribers) or before the
# server stops reading its requests (anyone): a snapshot of 10,000 pending jobs is ~1.5 MB.
MAX_BACKLOG = 8 * 1024 * 1024
MAX_CLIENTS = 64
# Events the engine may publish while the server thread is busy before subscribers are cut
# off (they could not be given a complete stream any more).
MAX_QUEUED_EVENTS = 10_000
# A job's JSON shown in the detail view is read only up to this size.
MAX_DETAIL_BYTES = 256 * 1024
_RECV_BYTES = 65536


class RequestError(Exception):
    """A request the server understood but refuses; its text is the reply's ``error``."""


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    inbuf: bytearray = field(default_factory=bytearray)
    out: deque[memoryview] = field(default_factory=deque)
    out_bytes: int = 0
    subscribed: bool = False
    closing: bool = False  # close once everything queued is sent
    interest: int = 0  # the selector events registered


class ControlServer:
    """Serves the control protocol for ``engine`` on the Unix socket ``path``.

    ``start()`` raises :class:`ConfigurationError` (naming ``uploader.control.socket_path``)
    when the socket cannot be created, including when another engine answers on it.
    """

    def __init__(self, engine: DataUploader, path: Path, *, group: str | None = None,
                 max_backlog: int = MAX_BACKLOG, max_clients: int = MAX_CLIENTS) -> None:
        self.engine = engine
        self.path = Path(path)
        self.group = group
        self.max_backlog = max_backlog
        self.max_clients = max_clients
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self._woken = False
        self._events: deque[Event] = deque()
        self._overflowed = False
        self._clients: dict[int, _Client] = {}
        self._closing = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._handlers: dict[str, Callable[[_Client, dict[str, Any]], Any]] = {
            "hello": self._hello, "snapshot": self._snapshot, "job": self._job,
            "subscribe": self._subscribe, "unsubscribe": self._unsubscribe_client,
            "scan_now": self._scan_now, "pause": self._pause, "resume": self._resume,
            "retry": self._retry, "requeue": self._requeue,
        }
        assert set(self._handlers) == set(COMMANDS)

    @classmethod
    def for_engine(cls, engine: DataUploader) -> ControlServer:
        """The server the engine's ``uploader.control`` settings describe."""
        settings = engine.settings
        return cls(engine, socket_path(settings), group=settings["control"]["group"])

    # --- lifecycle

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def start(self) -> None:
        try:
            self._listener = self._bind()
        except BaseException:
            self.close()
            raise
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._unsubscribe = self.engine.monitor.subscribe(self._on_event)
        self._thread = threading.Thread(target=self._serve, name="uploader-control",
                                        daemon=True)
        self._thread.start()
        log.info("control socket listening on %s", self.path)

    def close(self) -> None:
        """Stop serving, disconnect every client and remove the socket file (if still ours)."""
        if self._closed:
            return
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._closing = True
        self._poke()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        for client in list(self._clients.values()):
            self._drop(client)
        if self._listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
            self._remove_socket_file()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the socket file

    def _bind(self) -> socket.socket:
        path = self.path
        if len(os.fsencode(path)) > MAX_PATH_BYTES:
            raise ConfigurationError(
                f"control socket path {path} is {len(os.fsencode(path))} bytes long; Unix "
                f"sockets allow at most {MAX_PATH_BYTES} here", setting=SETTING)
        gid = self._group_id()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"cannot create directory {path.parent} for the control "
                                     f"socket: {exc.strerror}", setting=SETTING) from exc
        self._remove_stale_socket()
        temporary = path.parent / f".{secrets.token_hex(4)}.s"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(temporary))
            try:
                os.chmod(temporary, 0o660)
                if gid is not None:
                    os.chown(temporary, -1, gid)
                sock.listen(64)
                # link() never replaces an existing file, unlike rename(): if another engine
                # bound the path since the check above, this one fails instead of stealing it.
                os.link(temporary, path)
            finally:
                os.unlink(temporary)
            st = os.stat(path)
        except FileExistsError as exc:
            sock.close()
            raise ConfigurationError(f"another uploader created the control socket {path} "
                                     "while this one was starting", setting=SETTING) from exc
        except OSError as exc:
            sock.close()
            raise ConfigurationError(f"cannot create the control socket {path}: "
                                     f"{exc.strerror or exc}", setting=SETTING) from exc
        self._inode = (st.st_dev, st.st_ino)
        return sock

    def _group_id(self) -> int | None:
        if not self.group:
            return None
        try:
            return grp.getgrnam(self.group).gr_gid
        except KeyError:
            raise ConfigurationError(f"group {self.group!r} does not exist",
                                     setting="uploader.control.group") from None

    def _remove_stale_socket(self) -> None:
        """Remove a socket left by an engine that died; refuse if an engine still answers."""
        path = self.path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigurationError(f"{path} exists and is not a socket; refusing to replace "
                                     "it", setting=SETTING)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            pass  # nobody listens: the engine that made it is gone
        except OSError as exc:
            raise ConfigurationError(f"cannot tell whether another uploader uses {path}: "
                                     f"{exc.strerror or exc}", setting=SETTING) from exc
        else:
            raise ConfigurationError(
                f"another uploader is already running: it answers on {path}. Stop it first "
                "(or give this one another socket path)", setting=SETTING)
        finally:
            probe.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        log.info("removed the stale control socket %s", path)

    def _remove_socket_file(self) -> None:
        # Only our own: a newer engine may have replaced a socket it found stale.
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)

    # --- the engine's side: never blocks

    def _on_event(self, event: Event) -> None:
        """Called on the engine's thread for every event: queue it and wake the server."""
        if len(self._events) >= MAX_QUEUED_EVENTS:
            self._overflowed = True
            return
        self._events.append(event)
        self._poke()

    def _poke(self) -> None:
        if self._woken:
            return
        self._woken = True
        # A full wake-up buffer means a wake-up is already pending: nothing is lost.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # --- the server thread

    def _serve(self) -> None:
        while not self._closing:
            try:
                ready = self._selector.select()
            except OSError:
                if self._closing:
                    return
                raise
            for key, mask in ready:
                if key.fileobj is self._listener:
                    self._accept()
                elif key.fileobj is self._wake_r:
                    self._drain_wake()
                else:
                    client: _Client = key.data
                    try:
                        if mask & selectors.EVENT_WRITE:
                            self._flush(client)
                        if mask & selectors.EVENT_READ and client.sock.fileno() >= 0:
                            self._read(client)
                    except Exception:
                        # A bug must cost one client, never the socket for everyone.
                        log.exception("control: dropped a client after an internal error")
                        self._drop(client)
            self._fan_out()

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        # Cleared only after draining, and before the events are fanned out: an event queued
        # while the flag was still set is sent by that fan-out; one queued after it pokes
        # again. (Clearing first could swallow the poke and leave the flag set for good.)
        self._woken = False

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        sock.setblocking(False)
        client = _Client(sock)
        if len(self._clients) >= self.max_clients:
            with contextlib.suppress(OSError):
                sock.send(encode({"id": None, "ok": False,
                                  "error": f"too many clients (at most {self.max_clients})"}))
            sock.close()
            return
        self._clients[id(client)] = client
        self._update_interest(client)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            # The client went away, maybe in the middle of a line: that line is dropped.
            self._drop(client)
            return
        client.inbuf += data
        while not client.closing:
            end = client.inbuf.find(b"\n")
            if end < 0:
                break
            line = bytes(client.inbuf[:end])
            del client.inbuf[: end + 1]
            if len(line) > MAX_REQUEST_BYTES:
                self._refuse_long_request(client)
                return
            self._handle_line(client, line)
        if len(client.inbuf) > MAX_REQUEST_BYTES:
            self._refuse_long_request(client)
        self._update_interest(client)

    def _refuse_long_request(self, client: _Client) -> None:
        client.inbuf.clear()
        client.closing = True  # first: the flush that sends the reply then drops the client
        self._send(client, {"id": None, "ok": False,
                            "error": f"request longer than {MAX_REQUEST_BYTES} bytes; closing"})

    def _handle_line(self, client: _Client, line: bytes) -> None:
        if not line.strip():
            return
        request_id: Any = None
        try:
            try:
                request = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                raise RequestError("request is not UTF-8") from None
            except ValueError as exc:
                raise RequestError(f"request is not JSON: {exc}") from None
            if not isinstance(request, dict):
                raise RequestError("request must be a JSON object")
            request_id = request.get("id")
            cmd = request.get("cmd")
            handler = self._handlers.get(cmd) if isinstance(cmd, str) else None
            if handler is None:
                raise RequestError(f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")
            # Events already published go out before this reply: a subscriber then never
            # reads a snapshot followed by an event that the snapshot already counts.
            self._fan_out()
            result = handler(client, request)
        except RequestError as exc:
            self._send(client, {"id": request_id, "ok": False, "error": str(exc)})
            return
        except (PermanentJobError, FileNotFoundError) as exc:
            self._send(client, {"id": request_id, "ok": False, "error": str(exc)})
            return
        except Exception as exc:
            log.exception("control request failed")
            self._send(client, {"id": request_id, "ok": False,
                                "error": f"internal error: {type(exc).__name__}: {exc}"})
            return
        self._send(client, {"id": request_id, "ok": True, "result": result})

    def _fan_out(self) -> None:
        if self._overflowed:
            self._overflowed = False
            self._events.clear()
            for client in [c for c in self._clients.values() if c.subscribed]:
                log.warning("control: events came faster than they could be sent; "
                            "subscribers were disconnected and will resynchronise")
                self._drop(client)
            return
        while self._events:
            event = self._events.popleft()
            subscribers = [c for c in self._clients.values() if c.subscribed and not c.closing]
            if not subscribers:
                continue
            line = encode({"event": event.to_json()})
            for client in subscribers:
                if client.out_bytes > self.max_backlog:
                    log.warning("control: disconnected a subscriber that stopped reading "
                                "(%d bytes unsent)", client.out_bytes)
                    self._drop(client)
                    continue
                self._queue(client, line)

    def _send(self, client: _Client, message: dict[str, Any]) -> None:
        try:
            line = encode(message)
        except ValueError as exc:  # NaN somewhere in the data
            line = encode({"id": message.get("id"), "ok": False,
                           "error": f"internal error: reply not representable: {exc}"})
        self._queue(client, line)

    def _queue(self, client: _Client, line: bytes) -> None:
        if client.sock.fileno() < 0:
            return
        client.out.append(memoryview(line))
        client.out_bytes += len(line)
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        while client.out:
            chunk = client.out[0]
            try:
                sent = client.sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # the client went away while we were writing
                self._drop(client)
                return
            client.out_bytes -= sent
            if sent < len(chunk):
                client.out[0] = chunk[sent:]
                break
            client.out.popleft()
        if client.closing and not client.out:
            self._drop(client)
            return
        self._update_interest(client)

    def _update_interest(self, client: _Client) -> None:
        if client.sock.fileno() < 0:
            return
        events = 0
        # Backpressure: stop reading requests from a client that does not read its replies.
        if not client.closing and client.out_bytes <= self.max_backlog:
            events |= selectors.EVENT_READ
        if client.out:
            events |= selectors.EVENT_WRITE
        if events == client.interest:
            return
        if client.interest == 0:
            self._selector.register(client.sock, events, client)
        elif events == 0:
            self._selector.unregister(client.sock)
        else:
            self._selector.modify(client.sock, events, client)
        client.interest = events

    def _drop(self, client: _Client) -> None:
        self._clients.pop(id(client), None)
        if client.interest:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(client.sock)
            client.interest = 0
        client.out.clear()
        client.out_bytes = 0
        client.subscribed = False
        client.sock.close()

    # --- commands

    def _hello(self, client: _Client, request: dict[str, Any]) -> dict[str, Any]:
        engine = self.engine
        return {"protocol": PROTOCOL_VERSION, "pid": os.getpid(), "commands": list(COMMANDS),
                "plugins": engine.plugin_names, "pending_dir": str(engine.pending_dir),
                "uploaded_dir": str(engine.uploaded_dir), "failed_dir": str(engine.failed_dir)}

    def _snapshot(self, client: _Client, request: dict[str, Any]) -> dict[str, Any]:
        limit = request.get("pending_limit", DEFAULT_PENDING_LIMIT)
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or limit < 0):
            raise RequestError("pending_limit must be a non-negative integer")
        return self.engine.monitor.snapshot(pending_limit=limit)

    def _subscribe(self, client: _Client, request: dict[str, Any]) -> dict[str, Any]:
        client.subscribed = True
        with_snapshot = request.get("snapshot", True)
        limit = request.get("pending_limit", DEFAULT_PENDING_LIMIT)
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or limit < 0):
            raise RequestError("pending_limit must be a non-negative integer")
        snapshot = self.engine.monitor.snapshot(pending_limit=limit) if with_snapshot else None
        return {"snapshot": snapshot}

    def _unsubscribe_client(self, client: _Client, request: dict[str, Any]) -> dict[str, Any]:
        client.subscribed = False
        return {}

    def _job(self, client: _Client, request: dict[str, Any]) -> dict[str, Any]:
        event_id = _event_id(request)
        check_event_id(event_id)
        detail = self.engine.monitor.job(event_id)
        detail.update(location=None, metadata=None, metadata_error=None, error_report=None)
        engine = self.engine
        for location, directory in (("pending", engine.pending_dir),
                                    ("failed", engine.failed_dir),
                                    ("uploaded", engine.uploaded_dir)):
            document, problem = _read_json(directory / f"{event_id}{JSON_SUFFIX}")
            if document is not None or problem is not None:
                detail.update(location=location, metadata=document, metadata_error=problem)
                break
        report, _ = _read_json(engine.failed_dir / f"{event_id}.error.json")
        detail["error_report"] = report
        return detail

    def _scan_now(self, client: _Client, request: dict[str, Any]) -> dict[str, Any]:
        self.engine.scan_now()
        return {}

    def _pause(self, client: _Client, request: dict[str, Any]) -> dict[str, Any]:
        self.engine.pause()
        return {"paused": True}

    def _resume(self, client: _Client, request: dict[str, Any]) -> dict[str, Any]:
        self.engine.resume()
        return {"paused": False}

    def _retry(self, client: _Client, request: dict[str, Any]) -> dict[str, Any]:
        event_id = _event_id(request)
        if not self.engine.retry_now(event_id):
            raise RequestError(f"{event_id} is not pending")
        return {"event_id": event_id}

    def _requeue(self, client: _Client, request: dict[str, Any]) -> dict[str, Any]:
        event_id = _event_id(request)
        try:
            moved = self.engine.requeue(event_id)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise RequestError(f"cannot requeue {event_id}: {exc.strerror or exc}") from exc
        return {"event_id": event_id, "moved": moved}


def _event_id(request: dict[str, Any]) -> str:
    event_id = request.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise RequestError("event_id (a string) is required")
    return event_id


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(document, None), or (None, why it cannot be shown), or (None, None) if absent.

    Never follows a symlink: the socket's users must not read files through it that they
    could not read themselves.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, f"{path.name} is a symlink; not shown"
        return None, f"cannot read {path.name}: {exc.strerror}"
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, f"{path.name} is not a regular file"
        data = file.read(MAX_DETAIL_BYTES + 1)
    if len(data) > MAX_DETAIL_BYTES:
        return None, f"{path.name} is larger than {MAX_DETAIL_BYTES // 1024} KiB; not shown"
    try:
        return json.loads(data, parse_constant=_reject_constant), None
    except ValueError as exc:
        return None, f"{path.name} is not valid JSON: {exc}"
