"""The TCP fault proxy of ``uploader_chaos`` against a real loopback server.

Timing assertions are lower bounds only: a slow machine makes things slower, never faster.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from uploader_chaos import FaultProxy
from uploader_chaos.cli import apply_command, parse_address
from uploader_chaos.proxy import CHUNK_SIZE

ROOT = Path(__file__).resolve().parents[2]
POLL = 0.02


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


@dataclass
class ServerSide:
    """What the server saw of one connection."""

    received: int = 0
    ending: str | None = None  # "eof" or "reset" once it ended


class LoopbackServer:
    """A TCP server on 127.0.0.1 that echoes (or just swallows) what it receives."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.connections: list[ServerSide] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL)
        self.port: int = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True)]
        self._threads[0].start()

    @property
    def accepted(self) -> int:
        with self._lock:
            return len(self.connections)

    def side(self, index: int) -> ServerSide:
        with self._lock:
            return self.connections[index]

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            side = ServerSide()
            with self._lock:
                self.connections.append(side)
            thread = threading.Thread(target=self._serve, args=(conn, side), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, side: ServerSide) -> None:
        conn.settimeout(POLL)
        with conn:
            try:
                while not self._stop.is_set():
                    try:
                        data = conn.recv(CHUNK_SIZE)
                    except TimeoutError:
                        continue
                    if not data:
                        side.ending = "eof"
                        return
                    side.received += len(data)
                    if self.echo:
                        self._send_all(conn, data)
            except OSError:  # reset by the peer, or a broken pipe after a reset
                side.ending = "reset"

    def _send_all(self, conn: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._stop.is_set():
            try:
                view = view[conn.send(view):]
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(5)
        self._listener.close()


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer()
    yield srv
    srv.close()


@pytest.fixture
def sink() -> Iterator[LoopbackServer]:
    srv = LoopbackServer(echo=False)
    yield srv
    srv.close()


@pytest.fixture
def proxy(server: LoopbackServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", server.port).start() as p:
        yield p


def connect(p: FaultProxy, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", p.port), timeout=timeout)


def round_trip(p: FaultProxy, payload: bytes) -> bytes:
    """Send ``payload`` through the proxy, half-close, and read the echo to the end."""
    with connect(p) as sock:
        errors: list[BaseException] = []

        def send() -> None:
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
            except OSError as error:
                errors.append(error)

        sender = threading.Thread(target=send)
        sender.start()
        chunks = []
        while data := sock.recv(CHUNK_SIZE):
            chunks.append(data)
        sender.join()
    assert not errors
    return b"".join(chunks)


def echo(sock: socket.socket, message: bytes = b"ping") -> bytes:
    """Send ``message`` and read back exactly as many bytes."""
    sock.sendall(message)
    received = b""
    while len(received) < len(message):
        data = sock.recv(min(CHUNK_SIZE, len(message) - len(received)))
        assert data, "connection closed"
        received += data
    return received


def assert_reset(sock: socket.socket) -> None:
    """The peer reset the connection: reading raises, it does not just see EOF."""
    sock.settimeout(5)
    with pytest.raises(ConnectionResetError):
        while sock.recv(CHUNK_SIZE):
            pass


def assert_silent(sock: socket.socket, seconds: float = 0.3) -> None:
    """Nothing arrives, and the connection is neither closed nor reset."""
    sock.settimeout(seconds)
    with pytest.raises(TimeoutError):
        sock.recv(CHUNK_SIZE)


# ---------------------------------------------------------------------------- pass through


def test_pass_through_forwards_5_mb_both_ways_intact(proxy: FaultProxy,
                                                     server: LoopbackServer) -> None:
    payload = os.urandom(5 * 1024 * 1024)
    echoed = round_trip(proxy, payload)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    assert proxy.bytes_upstream == proxy.bytes_downstream == len(payload)
    assert proxy.connections_accepted == 1
    assert wait_until(lambda: proxy.active_connections == 0)
    assert wait_until(lambda: server.side(0).ending == "eof")
    assert server.side(0).received == len(payload)
    assert (proxy.cuts, proxy.connections_cut, proxy.connections_refused) == (0, 0, 0)


def test_parallel_connections_are_counted_exactly(proxy: FaultProxy) -> None:
    payloads = [os.urandom(100_000 + i) for i in range(12)]
    results: dict[int, bytes] = {}

    def run(i: int) -> None:
        results[i] = round_trip(proxy, payloads[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(payloads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert all(results[i] == payloads[i] for i in range(len(payloads)))
    total = sum(map(len, payloads))
    stats = proxy.stats()
    assert (stats.bytes_upstream, stats.bytes_downstream) == (total, total)
    assert stats.connections_accepted == len(payloads)
    assert wait_until(lambda: proxy.active_connections == 0)


def test_upstream_down_resets_the_client() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        dead_port = placeholder.getsockname()[1]
    with FaultProxy("127.0.0.1", dead_port).start() as p:
        # The reset may come so fast that connect() itself reports it.
        with pytest.raises(ConnectionResetError), connect(p) as sock:
            sock.recv(10)
        assert wait_until(lambda: p.active_connections == 0)
        assert p.connections_accepted == 1


def test_a_reset_by_the_server_reaches_the_client() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        with FaultProxy("127.0.0.1", listener.getsockname()[1]).start() as p, \
                connect(p) as sock:
            conn, _ = listener.accept()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            assert_reset(sock)
            assert wait_until(lambda: p.active_connections == 0)
            assert p.cuts == 0


def test_switching_modes_during_a_transfer_loses_nothing(proxy: FaultProxy) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    stop = threading.Event()

    def flap() -> None:
        while not stop.is_set():
            proxy.stall()
            proxy.stats()
            time.sleep(0.005)
            proxy.throttle(50 * 1024 * 1024)
            proxy.pass_through()
            time.sleep(0.005)

    flapper = threading.Thread(target=flap)
    flapper.start()
    try:
        assert round_trip(proxy, payload) == payload
    finally:
        stop.set()
        flapper.join(5)
    assert proxy.bytes_upstream == proxy.bytes_downstream == len(payload)


# ---------------------------------------------------------------------------- cuts


def test_cut_now_resets_every_connection_on_both_sides(proxy: FaultProxy,
                                                       server: LoopbackServer) -> None:
    with connect(proxy) as a, connect(proxy) as b:
        assert echo(a) == echo(b) == b"ping"
        assert proxy.active_connections == 2
        proxy.cut_now()
        assert proxy.active_connections == 0
        assert (proxy.cuts, proxy.connections_cut) == (1, 2)
        assert_reset(a)
        assert_reset(b)
    assert wait_until(lambda: [server.side(i).ending for i in (0, 1)] == ["reset", "reset"])
    with connect(proxy) as c:
        assert echo(c) == b"ping"


def blast_until_reset(sock: socket.socket, size: int = 4 * 1024 * 1024) -> None:
    """Send ``size`` bytes from a thread while reading until the connection is reset."""
    send_errors: list[OSError] = []

    def send() -> None:
        try:
            sock.sendall(os.urandom(size))
        except OSError as error:
            send_errors.append(error)

    sender = threading.Thread(target=send)
    sender.start()
    sock.settimeout(5)
    read_error: OSError | None = None
    try:
        while sock.recv(CHUNK_SIZE):
            pass
    except ConnectionResetError as error:
        read_error = error
    finally:
        sender.join(5)
    # The kernel reports a reset once, to whichever call comes first: the read or the send.
    assert read_error is not None or any(isinstance(e, ConnectionResetError)
                                         for e in send_errors)


@pytest.mark.parametrize("direction", ["upstream", "downstream", "both"])
def test_cut_after_bytes_resets_at_the_offset(direction: str, server: LoopbackServer) -> None:
    n = 300_000
    with FaultProxy("127.0.0.1", server.port).start() as p, connect(p) as sock:
        assert echo(sock) == b"ping"
        p.cut_after_bytes(n, direction)
        armed = p.stats()
        assert echo(sock, b"y" * 100_000) == b"y" * 100_000  # 200 kB in all: no cut yet
        blast_until_reset(sock)
        stats = p.stats()
        up = stats.bytes_upstream - armed.bytes_upstream
        down = stats.bytes_downstream - armed.bytes_downstream
        forwarded = {"upstream": up, "downstream": down, "both": up + down}[direction]
        assert forwarded == n  # the chunk that crossed n was cut short at n exactly
        assert (stats.cuts, stats.connections_cut) == (1, 1)
        assert wait_until(lambda: server.side(0).ending == "reset")
        assert server.side(0).received - armed.bytes_upstream <= up
        if direction == "upstream":
            assert server.side(0).received - armed.bytes_upstream >= n - CHUNK_SIZE
        assert p.state == "pass"  # one-shot


def test_cut_after_bytes_seen_by_the_server_within_one_chunk(sink: LoopbackServer) -> None:
    n = 1_000_000
    with FaultProxy("127.0.0.1", sink.port).start() as p, connect(p) as sock:
        p.cut_after_bytes(n)
        blast_until_reset(sock)
        assert p.bytes_upstream == n
        assert wait_until(lambda: sink.side(0).ending == "reset")
        assert n - CHUNK_SIZE <= sink.side(0).received <= n


def test_cut_after_bytes_is_one_shot_unless_repeating(proxy: FaultProxy) -> None:
    proxy.cut_after_bytes(50_000)
    with connect(proxy) as sock:
        blast_until_reset(sock, 500_000)
    payload = os.urandom(200_000)
    assert round_trip(proxy, payload) == payload  # the next connection passes
    assert proxy.cuts == 1

    proxy.cut_after_bytes(50_000, repeat=True)
    for expected in (2, 3):
        with connect(proxy) as sock:
            blast_until_reset(sock, 500_000)
        assert proxy.cuts == expected
    proxy.pass_through()
    assert round_trip(proxy, payload) == payload
    assert proxy.cuts == 3


def test_cut_after_seconds(proxy: FaultProxy, server: LoopbackServer) -> None:
    with connect(proxy) as sock:
        started = time.monotonic()
        proxy.cut_after_seconds(0.3)
        assert echo(sock) == b"ping"
        assert_reset(sock)
        assert time.monotonic() - started >= 0.3
    assert (proxy.cuts, proxy.connections_cut) == (1, 1)
    assert wait_until(lambda: server.side(0).ending == "reset")
    with connect(proxy) as sock:
        assert echo(sock) == b"ping"


def test_pass_through_disarms_pending_cuts(proxy: FaultProxy) -> None:
    proxy.cut_after_seconds(0.2)
    proxy.cut_after_bytes(10)
    proxy.pass_through()
    with connect(proxy) as sock:
        time.sleep(0.3)
        assert echo(sock, b"more than ten bytes") == b"more than ten bytes"
    assert proxy.cuts == 0


# ---------------------------------------------------------------------------- stall, refuse


def test_stall_forwards_nothing_and_closes_nothing(proxy: FaultProxy,
                                                   server: LoopbackServer) -> None:
    with connect(proxy) as old:
        assert echo(old) == b"ping"
        proxy.stall()
        old.sendall(b"held back")  # the send itself succeeds
        assert_silent(old)
        assert server.side(0).received == 4
        assert server.side(0).ending is None

        with connect(proxy) as new:  # accepted, but the server hears nothing of it
            new.sendall(b"hello")
            assert_silent(new, 0.2)
            assert server.accepted == 1
            assert wait_until(lambda: proxy.active_connections == 2)

            proxy.pass_through()  # everything held back flows again
            old.settimeout(5)
            new.settimeout(5)
            assert old.recv(100) == b"held back"
            assert new.recv(100) == b"hello"
        assert server.accepted == 2
    with connect(proxy) as sock:
        assert echo(sock) == b"ping"
    assert (proxy.cuts, proxy.connections_refused) == (0, 0)


def test_stall_holds_back_a_closing_client(proxy: FaultProxy,
                                             server: LoopbackServer) -> None:
    with connect(proxy) as sock:
        assert echo(sock) == b"ping"
        proxy.stall()
        sock.shutdown(socket.SHUT_WR)  # the client's FIN is held back too
        time.sleep(0.2)
        assert server.side(0).ending is None
        proxy.pass_through()
        sock.settimeout(5)
        assert sock.recv(10) == b""
        assert wait_until(lambda: server.side(0).ending == "eof")


def test_refuse_resets_new_connections_only(proxy: FaultProxy, server: LoopbackServer) -> None:
    with connect(proxy) as old:
        assert echo(old) == b"ping"
        proxy.refuse()
        # The kernel completes the handshake, then the proxy resets: connect() itself may
        # already see the reset, or the first read does.
        with contextlib.suppress(ConnectionResetError), connect(proxy) as new:
            assert new.recv(10) == b""
        assert wait_until(lambda: proxy.connections_refused == 1)
        assert echo(old, b"still here") == b"still here"
        assert server.accepted == 1
        assert proxy.connections_accepted == 2
        proxy.pass_through()
        with connect(proxy) as new:
            assert echo(new) == b"ping"
    assert proxy.cuts == 0


# ---------------------------------------------------------------------------- throttle, latency


def test_throttle_limits_the_rate(proxy: FaultProxy) -> None:
    payload = os.urandom(1024 * 1024)
    proxy.throttle(2 * 1024 * 1024)
    started = time.monotonic()
    assert round_trip(proxy, payload) == payload
    assert time.monotonic() - started >= 0.35  # ~0.5 s at 2 MB/s


def test_throttle_applies_to_an_open_connection(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert echo(sock) == b"ping"
        proxy.throttle(10_000)
        started = time.monotonic()
        assert echo(sock, b"a" * 3_000) == b"a" * 3_000
        assert time.monotonic() - started >= 0.25  # 3 kB at 10 kB/s, ~0.3 s
        proxy.throttle(math.inf)
        assert echo(sock) == b"ping"


def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert echo(sock) == b"ping"
        proxy.latency(0.15)
        started = time.monotonic()
        assert echo(sock) == b"ping"
        assert time.monotonic() - started >= 0.3  # 0.15 s up, 0.15 s down
        assert proxy.state == "latency 0.15 s"
        proxy.pass_through()
        assert proxy.state == "pass"
        assert echo(sock) == b"ping"


# ---------------------------------------------------------------------------- lifecycle


def test_close_while_stalled_returns_quickly(server: LoopbackServer) -> None:
    p = FaultProxy("127.0.0.1", server.port).start()
    with connect(p) as busy, connect(p) as idle:
        assert echo(busy) == echo(idle) == b"ping"
        p.stall()
        busy.setblocking(False)
        try:  # fill the buffers on the client's side of the dead link
            while True:
                busy.send(b"x" * CHUNK_SIZE)
        except BlockingIOError:
            pass
        with connect(p) as late:
            started = time.monotonic()
            p.close()
            assert time.monotonic() - started < 2
            late.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert late.recv(10) == b""
    threads = [t.name for t in threading.enumerate() if t.name.startswith("fault-proxy")]
    assert threads == []
    p.close()  # twice is fine
    with pytest.raises(RuntimeError):
        p.start()


def test_close_with_nothing_connected_and_counters_after_close(server: LoopbackServer) -> None:
    p = FaultProxy("127.0.0.1", server.port)
    p.stall()  # configuring before start is allowed
    with p:
        assert p.state == "stall"
        p.pass_through()
        payload = b"abc" * 1000
        assert round_trip(p, payload) == payload
    assert (p.bytes_upstream, p.bytes_downstream, p.connections_accepted) == (3000, 3000, 1)
    with pytest.raises(OSError), connect(p, timeout=1):
        pass


def test_invalid_arguments_are_rejected(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError):
        proxy.cut_after_bytes(10, "sideways")
    with pytest.raises(ValueError):
        proxy.cut_after_bytes(-1)
    with pytest.raises(ValueError):
        proxy.throttle(0)
    with pytest.raises(ValueError):
        proxy.latency(-1)
    with pytest.raises(ValueError):
        proxy.cut_after_seconds(float("nan"))
    assert proxy.state == "pass"


def test_listening_port_in_use_raises(proxy: FaultProxy, server: LoopbackServer) -> None:
    other = FaultProxy("127.0.0.1", server.port, listen_port=proxy.port)
    with pytest.raises(OSError):
        other.start()
    other.close()


# ---------------------------------------------------------------------------- command line


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:5432") == ("127.0.0.1", 5432)
    assert parse_address("[::1]:22") == ("::1", 22)
    for bad in ("5432", "host:", ":22", "host:99999", "host:port"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_address(bad)


def test_stdin_commands(proxy: FaultProxy) -> None:
    assert apply_command(proxy, "stall") == "ok: stall"
    assert apply_command(proxy, "refuse") == "ok: stall+refuse"
    assert apply_command(proxy, "pass") == "ok: pass"
    assert apply_command(proxy, "throttle 100000") == "ok: throttle 100000 B/s"
    assert apply_command(proxy, "latency 0.5") == "ok: throttle 100000 B/s+latency 0.5 s"
    assert apply_command(proxy, "pass") == "ok: pass"
    assert apply_command(proxy, "cut-bytes 1000 both repeat") == (
        "ok: cut after 1000 B both (repeating)")
    assert apply_command(proxy, "cut-seconds 60") == (
        "ok: cut after 1000 B both (repeating)+cut timer armed")
    assert apply_command(proxy, "cut") == "ok: cut after 1000 B both (repeating)+cut timer armed"
    assert proxy.cuts == 1
    assert apply_command(proxy, "pass") == "ok: pass"
    assert "bytes_upstream=0" in (apply_command(proxy, "stats") or "")
    assert "cut-bytes" in (apply_command(proxy, "help") or "")
    assert (apply_command(proxy, "throttle fast") or "").startswith("error:")
    assert (apply_command(proxy, "cut-bytes 10 sideways") or "").startswith("error:")
    assert (apply_command(proxy, "dance") or "").startswith("unknown command")
    assert apply_command(proxy, "   ") == ""
    assert apply_command(proxy, "quit") is None


def test_command_line_proxy(server: LoopbackServer) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "uploader_chaos", "proxy", "--listen", "127.0.0.1:0",
         "--upstream", f"127.0.0.1:{server.port}", "--mode", "stall", "--latency", "0.01"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    try:
        banner = process.stdout.readline()
        assert "listening on 127.0.0.1:" in banner and "stall+latency 0.01 s" in banner
        port = int(banner.split("listening on 127.0.0.1:")[1].split(",")[0])
        process.stdin.write("pass\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "ok: pass"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert echo(sock) == b"ping"
        process.stdin.write("quit\n")
        process.stdin.flush()
        output = process.communicate(timeout=10)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert "conn 1 from 127.0.0.1:" in output and "accepted" in output
    assert "stopped: bytes_upstream=4 bytes_downstream=4 connections_accepted=1" in output
