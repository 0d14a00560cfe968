"""A TCP fault proxy: it sits between a client and one server and misbehaves on request.

``FaultProxy`` forwards every connection it accepts to one upstream address and can, at any
moment and from any thread, make that link fail the way cellular links fail:

``pass_through()``
    Normal forwarding. It also lifts stall, refuse, throttle and latency and disarms pending
    cuts: the proxy is back to a clean pipe.
``cut_now()``
    Resets (RST, via ``SO_LINGER`` 0) both sides of every open connection.
``cut_after_bytes(n, direction="upstream", *, repeat=False)``
    Arms a cut: once ``n`` more bytes have been forwarded in ``direction`` ("upstream" is client
    to server, "downstream" server to client, "both" counts the two together), summed over all
    connections, every open connection is reset. The chunk that crosses the limit is forwarded
    only up to the limit, so exactly ``n`` bytes pass. The cut is one-shot: the proxy then
    passes again, unless ``repeat`` is true, in which case it re-arms with the same ``n``
    (a link cut after every ``n`` bytes). A new call replaces an armed byte cut.
``cut_after_seconds(seconds)``
    Arms a one-shot timer that resets every connection open when it fires. A new call replaces
    an armed timer.
``stall()``
    The silent dead link: nothing is forwarded in either direction, no FIN, no RST. Connections
    stay open; new ones are accepted from the client but the server hears nothing of them until
    the stall is lifted. Whatever was held back flows again after ``pass_through()``.
``refuse()``
    The server is down: new connections are reset at once. Open connections are untouched.
``throttle(bytes_per_second)``
    Limits each direction of each connection to that rate (``math.inf`` lifts only the limit).
``latency(seconds)``
    Delays each forwarded chunk by ``seconds`` after it was received (0 lifts it). As on a real
    high-latency link, one connection's throughput falls to about one chunk per delay.

Stall and refuse are independent (both may be on); throttle and latency combine with either.
Every method takes effect, for open and new connections, before it returns.

The proxy runs an asyncio loop in one background daemon thread; ``close()`` stops it, closes
every socket and joins the thread, and never waits on a stalled peer. Counters
(``bytes_upstream``, ``bytes_downstream``, ``connections_accepted``, ``connections_refused``,
``active_connections``, ``cuts``, ``connections_cut``, or all at once with ``stats()``) may be
read from any thread. Connection events are logged at INFO on the ``uploader_chaos`` logger.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import math
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

_TIOCOUTQ: int | None
try:  # only to measure the kernel's send queue before a cut; optional
    import fcntl
    import termios
except ImportError:  # pragma: no cover - not a Unix
    _TIOCOUTQ = None
else:
    _TIOCOUTQ = termios.TIOCOUTQ

log = logging.getLogger("uploader_chaos")

UPSTREAM = "upstream"
DOWNSTREAM = "downstream"
BOTH = "both"
DIRECTIONS = (UPSTREAM, DOWNSTREAM, BOTH)

CHUNK_SIZE = 65536
_CONNECT_TIMEOUT = 10.0
_CONTROL_TIMEOUT = 10.0
_JOIN_TIMEOUT = 10.0
_FLUSH_TIMEOUT = 0.5
_RST_LINGER = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class ProxyStats:
    """A consistent snapshot of a proxy's counters."""

    bytes_upstream: int
    bytes_downstream: int
    connections_accepted: int
    connections_refused: int
    active_connections: int
    cuts: int
    connections_cut: int


@dataclass
class _ByteCut:
    limit: int
    remaining: int
    directions: frozenset[str]
    repeat: bool


def _format_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def _reset_transport(transport: asyncio.WriteTransport | None) -> None:
    """Close ``transport`` so that the peer receives a RST rather than a FIN."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
    transport.abort()


def _reset_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
    sock.close()


class _Connection:
    """One client connection and, once the link lets it through, its upstream connection."""

    def __init__(self, number: int, peer: str, client: asyncio.StreamWriter,
                 task: asyncio.Task[Any] | None) -> None:
        self.number = number
        self.peer = peer
        self.client = client
        self.task = task
        self.upstream: asyncio.StreamWriter | None = None
        self.upstream_socket: socket.socket | None = None
        self.sent = {UPSTREAM: 0, DOWNSTREAM: 0}

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]

    def reset(self) -> None:
        """RST both sides and stop forwarding."""
        for writer in self.writers():
            _reset_transport(writer.transport)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    def abort(self) -> None:
        for writer in self.writers():
            writer.transport.abort()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    def close(self) -> None:
        """Close whatever is still open, gracefully (FIN)."""
        for writer in self.writers():
            if not writer.transport.is_closing():
                writer.transport.close()
        if self.upstream is None and self.upstream_socket is not None:
            # Cancelled while connecting: the server may have accepted it already.
            _reset_socket(self.upstream_socket)


class FaultProxy:
    """Forward TCP connections to ``upstream_host:upstream_port``, injecting faults on request.

    ``start()`` binds (``listen_port=0`` picks a free port, see ``port``) and returns the proxy;
    it is also a context manager that closes the proxy on exit. See the module documentation
    for the exact semantics of each fault.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *,
                 listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self._listen_port = listen_port

        # Serialises start/close/control calls; never taken by the loop thread.
        self._control_lock = threading.Lock()
        # Guards the counters; taken briefly by both sides.
        self._counter_lock = threading.Lock()
        self._bytes = {UPSTREAM: 0, DOWNSTREAM: 0}
        self._accepted = 0
        self._refused = 0
        self._active = 0
        self._cuts = 0
        self._connections_cut = 0

        # Fault state: owned by the loop thread once started.
        self._stalled = False
        self._refusing = False
        self._rate = math.inf
        self._delay = 0.0
        self._byte_cut: _ByteCut | None = None
        self._cut_delay: float | None = None  # armed before start: scheduled by start()
        self._timer: asyncio.TimerHandle | None = None

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: socket.socket | None = None
        self._port: int | None = None
        self._closed = False
        self._flowing: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._connections: dict[int, _Connection] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._claimed: set[socket.socket] = set()  # accepted sockets owned by a transport
        self._numbers = itertools.count(1)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FaultProxy:
        """Bind the listening socket and start forwarding in a background thread."""
        with self._control_lock:
            if self._thread is not None or self._closed:
                raise RuntimeError("a FaultProxy can be started only once")
            listener = socket.create_server((self.listen_host, self._listen_port), backlog=128)
            self._listener = listener
            ready: concurrent.futures.Future[None] = concurrent.futures.Future()
            thread = threading.Thread(target=self._run, args=(listener, ready),
                                      name=f"fault-proxy-{listener.getsockname()[1]}",
                                      daemon=True)
            self._thread = thread
            thread.start()
            try:
                ready.result(timeout=_CONTROL_TIMEOUT)
            except BaseException:
                self._closed = True
                listener.close()
                thread.join(_JOIN_TIMEOUT)
                raise
            self._port = int(listener.getsockname()[1])
            log.debug("proxy listening on %s, upstream %s", _format_address(
                listener.getsockname()), _format_address((self.upstream_host,
                                                         self.upstream_port)))
        return self

    def close(self) -> None:
        """Stop forwarding, close every socket and join the thread. Safe to call twice."""
        with self._control_lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
            if thread is None:
                return
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop has already ended
                    loop.call_soon_threadsafe(self._request_stop)
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                log.warning("fault proxy thread did not stop within %.0f s", _JOIN_TIMEOUT)
            self._loop = None

    def __enter__(self) -> FaultProxy:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        if self._port is None:
            raise RuntimeError("the proxy is not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """``(listen_host, port)``: where clients connect."""
        return self.listen_host, self.port

    # ------------------------------------------------------------------ faults

    def pass_through(self) -> None:
        """Forward normally: lift stall, refuse, throttle and latency; disarm pending cuts."""
        def action() -> None:
            self._set_stalled(False)
            self._refusing = False
            self._rate = math.inf
            self._delay = 0.0
            self._byte_cut = None
            self._cut_delay = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._control(action)

    def cut_now(self) -> None:
        """Reset every open connection, both sides."""
        self._control(lambda: self._cut_all("now"))

    def cut_after_bytes(self, n: int, direction: str = UPSTREAM, *, repeat: bool = False) -> None:
        """Reset every open connection once ``n`` more bytes were forwarded in ``direction``."""
        if n < 0:
            raise ValueError(f"n must be >= 0, not {n}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
        directions = frozenset((UPSTREAM, DOWNSTREAM) if direction == BOTH else (direction,))
        cut = _ByteCut(limit=n, remaining=n, directions=directions, repeat=repeat)

        def action() -> None:
            self._byte_cut = cut
        self._control(action)

    def cut_after_seconds(self, seconds: float) -> None:
        """Reset every connection open ``seconds`` from now (one-shot)."""
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, not {seconds}")

        def action() -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._loop is None:
                self._cut_delay = seconds
            else:
                self._schedule_timer(seconds)
        self._control(action)

    def stall(self) -> None:
        """Forward nothing in either direction, close nothing: a silent dead link."""
        self._control(lambda: self._set_stalled(True))

    def refuse(self) -> None:
        """Reset new connections at once; open connections are untouched."""
        def action() -> None:
            self._refusing = True
        self._control(action)

    def throttle(self, bytes_per_second: float) -> None:
        """Limit each direction of each connection to ``bytes_per_second``."""
        if not bytes_per_second > 0:
            raise ValueError(f"bytes_per_second must be > 0, not {bytes_per_second}")

        def action() -> None:
            self._rate = float(bytes_per_second)
        self._control(action)

    def latency(self, seconds: float) -> None:
        """Delay each forwarded chunk by ``seconds``."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"seconds must be >= 0, not {seconds}")

        def action() -> None:
            self._delay = float(seconds)
        self._control(action)

    @property
    def state(self) -> str:
        """A short description of the active faults, e.g. ``"stall+throttle 1000 B/s"``."""
        parts = []
        if self._stalled:
            parts.append("stall")
        if self._refusing:
            parts.append("refuse")
        if math.isfinite(self._rate):
            parts.append(f"throttle {self._rate:g} B/s")
        if self._delay:
            parts.append(f"latency {self._delay:g} s")
        cut = self._byte_cut
        if cut is not None:
            which = BOTH if len(cut.directions) == 2 else next(iter(cut.directions))
            every = " (repeating)" if cut.repeat else ""
            parts.append(f"cut after {cut.remaining} B {which}{every}")
        if self._timer is not None or self._cut_delay is not None:
            parts.append("cut timer armed")
        return "+".join(parts) or "pass"

    # ------------------------------------------------------------------ counters

    def stats(self) -> ProxyStats:
        with self._counter_lock:
            return ProxyStats(self._bytes[UPSTREAM], self._bytes[DOWNSTREAM], self._accepted,
                              self._refused, self._active, self._cuts, self._connections_cut)

    @property
    def bytes_upstream(self) -> int:
        """Bytes forwarded from clients to the server."""
        with self._counter_lock:
            return self._bytes[UPSTREAM]

    @property
    def bytes_downstream(self) -> int:
        """Bytes forwarded from the server to clients."""
        with self._counter_lock:
            return self._bytes[DOWNSTREAM]

    @property
    def connections_accepted(self) -> int:
        """Client connections accepted, refused ones included."""
        with self._counter_lock:
            return self._accepted

    @property
    def connections_refused(self) -> int:
        """Client connections reset at once because of ``refuse()``."""
        with self._counter_lock:
            return self._refused

    @property
    def active_connections(self) -> int:
        """Client connections open now."""
        with self._counter_lock:
            return self._active

    @property
    def cuts(self) -> int:
        """Cuts fired (each resets all connections open at that moment)."""
        with self._counter_lock:
            return self._cuts

    @property
    def connections_cut(self) -> int:
        """Connections reset by cuts."""
        with self._counter_lock:
            return self._connections_cut

    # ------------------------------------------------------------------ loop thread

    def _control(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the loop thread and wait for it (directly when not running)."""
        if self._thread is not None and threading.get_ident() == self._thread.ident:
            action()  # from a callback on the loop thread itself
            return
        with self._control_lock:
            loop = self._loop
            if loop is None or self._closed:
                action()
                return
            done: concurrent.futures.Future[None] = concurrent.futures.Future()

            def run() -> None:
                try:
                    action()
                except BaseException as error:
                    done.set_exception(error)
                else:
                    done.set_result(None)
            loop.call_soon_threadsafe(run)
            done.result(timeout=_CONTROL_TIMEOUT)

    def _run(self, listener: socket.socket, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(listener, ready))
        except BaseException as error:
            if not ready.done():
                ready.set_exception(error)
            else:
                log.exception("fault proxy loop failed")
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    async def _main(self, listener: socket.socket, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        self._flowing = asyncio.Event()
        self._set_stalled(self._stalled)
        self._stop = asyncio.Event()
        listener.setblocking(False)
        loop.add_reader(listener.fileno(), self._accept, listener)
        try:
            self._loop = loop
            if self._cut_delay is not None:
                self._schedule_timer(self._cut_delay)
                self._cut_delay = None
            ready.set_result(None)
            await self._stop.wait()
        finally:
            loop.remove_reader(listener.fileno())
            listener.close()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            for _ in range(10):  # bounded: close() must never hang
                for connection in list(self._connections.values()):
                    connection.abort()
                handlers = list(self._handlers)
                if not handlers:
                    break
                for handler in handlers:
                    handler.cancel()
                await asyncio.wait(handlers, timeout=0.5)
            for _ in range(3):  # let the transports' deferred socket closes run
                await asyncio.sleep(0)

    def _accept(self, listener: socket.socket) -> None:
        """Accept every pending connection (a reader callback: no future can drop a socket)."""
        assert self._loop is not None
        while True:
            try:
                client, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of file descriptors, for instance: keep serving
                log.warning("accept failed: %s", error)
                return
            handler = self._loop.create_task(self._handle(client, address))
            self._handlers.add(handler)

            def done(task: asyncio.Task[None], client: socket.socket = client) -> None:
                self._handlers.discard(task)
                if client not in self._claimed:  # never reached its transport
                    client.close()
                self._claimed.discard(client)
            handler.add_done_callback(done)

    def _request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def _set_stalled(self, stalled: bool) -> None:
        self._stalled = stalled
        if self._flowing is not None:
            if stalled:
                self._flowing.clear()
            else:
                self._flowing.set()

    def _schedule_timer(self, seconds: float) -> None:
        assert self._loop is not None

        def fire() -> None:
            self._timer = None
            self._cut_all(f"after {seconds:g} s")
        self._timer = self._loop.call_later(seconds, fire)

    def _cut_all(self, reason: str) -> None:
        connections = list(self._connections.values())
        with self._counter_lock:
            self._cuts += 1
            self._connections_cut += len(connections)
        log.info("cut %s: resetting %d connection(s)", reason, len(connections))
        for connection in connections:
            connection.reset()
            self._forget(connection)

    def _forget(self, connection: _Connection) -> None:
        if self._connections.pop(connection.number, None) is not None:
            with self._counter_lock:
                self._active -= 1

    async def _handle(self, client: socket.socket, address: Any) -> None:
        number = next(self._numbers)
        peer = _format_address(address)
        with self._counter_lock:
            self._accepted += 1
        if self._refusing:
            self._refuse(number, peer, client)
            return
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection(sock=client, limit=CHUNK_SIZE)
        finally:
            if writer is None:  # cancelled before the socket had its transport
                client.close()
        self._claimed.add(client)
        connection = _Connection(number, peer, writer, asyncio.current_task())
        self._connections[number] = connection
        with self._counter_lock:
            self._active += 1
        log.info("conn %d from %s: accepted", number, peer)
        try:
            await self._serve(connection, reader)
        except asyncio.CancelledError:
            pass  # cut or close: the sockets are already dealt with
        except (OSError, EOFError) as error:
            log.info("conn %d: %s; resetting both sides", number,
                     error.strerror if isinstance(error, OSError) and error.strerror else error)
            connection.reset()
        finally:
            connection.close()
            self._forget(connection)
            log.info("conn %d: closed after %d B upstream, %d B downstream", number,
                     connection.sent[UPSTREAM], connection.sent[DOWNSTREAM])

    def _refuse(self, number: int, peer: str, client: socket.socket | asyncio.StreamWriter,
                ) -> None:
        with self._counter_lock:
            self._refused += 1
        log.info("conn %d from %s: refused", number, peer)
        if isinstance(client, socket.socket):
            _reset_socket(client)
        else:
            _reset_transport(client.transport)

    async def _serve(self, connection: _Connection, client_reader: asyncio.StreamReader) -> None:
        assert self._flowing is not None
        loop = asyncio.get_running_loop()
        await self._flowing.wait()  # on a dead link the server hears nothing
        if self._refusing:
            self._forget(connection)
            self._refuse(connection.number, connection.peer, connection.client)
            return
        sock, address = await self._connect_upstream(connection)
        upstream_reader, connection.upstream = await asyncio.open_connection(
            sock=sock, limit=CHUNK_SIZE)
        log.info("conn %d: connected to upstream %s", connection.number,
                 _format_address(address))
        pumps = [
            loop.create_task(self._pump(connection, UPSTREAM, client_reader,
                                        connection.upstream)),
            loop.create_task(self._pump(connection, DOWNSTREAM, upstream_reader,
                                        connection.client)),
        ]
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            for pump in done:
                pump.result()
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _connect_upstream(self, connection: _Connection) -> tuple[socket.socket, Any]:
        """A connected socket to the upstream server, trying each of its addresses in turn."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.upstream_host, self.upstream_port,
                                       type=socket.SOCK_STREAM)
        problems = []
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            connection.upstream_socket = sock
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, address), _CONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as error:
                sock.close()
                reason = "timed out" if isinstance(error, asyncio.TimeoutError) else (
                    error.strerror or str(error))
                problems.append(f"{_format_address(address)}: {reason}")
                continue
            return sock, address
        raise ConnectionError(f"upstream unreachable ({'; '.join(problems) or 'no address'})")

    def _chunk_size(self) -> int:
        if math.isfinite(self._rate):  # about 20 ms worth, so the rate is smooth
            return max(1, min(CHUNK_SIZE, int(self._rate * 0.02)))
        return CHUNK_SIZE

    async def _pump(self, connection: _Connection, direction: str,
                    reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        loop = asyncio.get_running_loop()
        link_free_at = 0.0  # when the throttled link has sent everything so far
        while True:
            await self._flowing.wait()
            data = await reader.read(self._chunk_size())
            received = loop.time()
            deliver_at = received + self._delay
            if data and math.isfinite(self._rate):
                link_free_at = max(received, link_free_at) + len(data) / self._rate
                deliver_at = max(deliver_at, link_free_at)
            wait = deliver_at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._flowing.wait()
            if writer.transport.is_closing():
                raise ConnectionResetError(f"{'server' if direction == UPSTREAM else 'client'} "
                                           "side is gone")
            if not data:  # half-close, as TCP does
                if writer.can_write_eof():
                    writer.write_eof()
                return
            data, fire = self._spend_budget(direction, data)
            if data:
                writer.write(data)
                connection.sent[direction] += len(data)
                with self._counter_lock:
                    self._bytes[direction] += len(data)
                await writer.drain()
            if fire:
                if self._flowing.is_set():  # nothing more passes while the last bytes land
                    self._flowing.clear()
                    try:
                        await self._flush(writer)
                    finally:
                        self._set_stalled(self._stalled)
                self._cut_all(f"after {connection.sent[direction]} B {direction} on conn "
                              f"{connection.number}")
                return

    def _spend_budget(self, direction: str, data: bytes) -> tuple[bytes, bool]:
        cut = self._byte_cut
        if cut is None or direction not in cut.directions:
            return data, False
        if len(data) < cut.remaining:
            cut.remaining -= len(data)
            return data, False
        data = data[:cut.remaining]
        if cut.repeat:
            cut.remaining = cut.limit
        else:
            self._byte_cut = None
        return data, True

    @staticmethod
    async def _flush(writer: asyncio.StreamWriter) -> None:
        """Let the bytes before a cut reach the peer, so that the cut is where it says.

        A reset discards what is still queued, in the proxy and in the kernel; waiting (briefly)
        until the peer has acknowledged everything makes the offset of a cut exact.
        """
        loop = asyncio.get_running_loop()
        transport = writer.transport
        sock = transport.get_extra_info("socket")
        give_up = loop.time() + _FLUSH_TIMEOUT
        while not transport.is_closing() and loop.time() < give_up:
            if transport.get_write_buffer_size() == 0 and _unacknowledged(sock) == 0:
                return
            await asyncio.sleep(0.001)


def _unacknowledged(sock: Any) -> int:
    """Bytes in the kernel's send queue of ``sock`` (Linux: SIOCOUTQ); 0 where unknown."""
    if _TIOCOUTQ is None or sock is None:
        return 0
    try:
        result = fcntl.ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", result)[0])
