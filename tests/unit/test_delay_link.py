"""The benchmark's delay line (``bench/link.py``): bytes arrive intact, late, and in order."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from bench.link import DelayLink


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """Echoes each connection's bytes back, then closes its side at the client's EOF."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[:2]
    listener.close()


def _receive(sock: socket.socket, count: int) -> bytes:
    chunks = []
    while count:
        chunk = sock.recv(min(count, 65536))
        assert chunk, "the link closed early"
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def test_bytes_cross_the_link_intact_both_ways(echo_server: tuple[str, int]) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    with DelayLink(*echo_server, one_way=0.005) as link, \
            socket.create_connection(("127.0.0.1", link.port), timeout=30) as client:
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        echoed = _receive(client, len(payload))
        sender.join()
        client.shutdown(socket.SHUT_WR)
        assert echoed == payload
        assert client.recv(1) == b"", "the server's close reaches the client"


def test_a_round_trip_takes_at_least_twice_the_one_way_delay(
        echo_server: tuple[str, int]) -> None:
    with DelayLink(*echo_server, one_way=0.1) as link, \
            socket.create_connection(("127.0.0.1", link.port), timeout=30) as client:
        started = time.monotonic()
        client.sendall(b"ping")
        assert _receive(client, 4) == b"ping"
        assert time.monotonic() - started >= 0.2
