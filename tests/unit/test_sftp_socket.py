"""The SFTP plugin's socket: reading ahead for paramiko's transport, and only there."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from uploader_plugins.sftp.connection import StallGuardSocket


def _pair(read_ahead: bool) -> tuple[StallGuardSocket, socket.socket]:
    ours, theirs = socket.socketpair()
    wrapped = StallGuardSocket(ours.family, ours.type, 0, 5.0, fileno=ours.detach(),
                               read_ahead=read_ahead)
    wrapped.settimeout(5.0)
    return wrapped, theirs


@pytest.fixture
def read_ahead() -> Iterator[tuple[StallGuardSocket, socket.socket]]:
    ours, theirs = _pair(read_ahead=True)
    yield ours, theirs
    ours.close()
    theirs.close()


def _readable(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def test_a_read_ahead_socket_brings_in_several_packets_with_one_read(
        read_ahead: tuple[StallGuardSocket, socket.socket]) -> None:
    ours, theirs = read_ahead
    theirs.sendall(b"HEAD" + b"first packet" + b"HEAD" + b"second")

    assert ours.recv(4) == b"HEAD"
    # Everything that had arrived was taken from the kernel by that one call...
    assert not _readable(ours)
    # ...and is handed out in order, in the sizes asked for.
    assert ours.recv(12) == b"first packet"
    assert ours.recv(4) == b"HEAD"
    assert ours.recv(100) == b"second"


def test_what_was_read_ahead_comes_before_what_arrives_later(
        read_ahead: tuple[StallGuardSocket, socket.socket]) -> None:
    ours, theirs = read_ahead
    theirs.sendall(b"abc")
    assert ours.recv(1) == b"a"
    theirs.sendall(b"def")

    assert ours.recv(10) == b"bc"  # never mixed with the newer bytes
    assert ours.recv(10) == b"def"
    theirs.close()
    assert ours.recv(10) == b""  # the end of the stream still shows


def test_a_socket_without_read_ahead_leaves_the_rest_where_select_sees_it() -> None:
    # The openssh transport's socket: paramiko's SFTP client selects on it before reading.
    ours, theirs = _pair(read_ahead=False)
    try:
        theirs.sendall(b"HEADrest")
        assert ours.recv(4) == b"HEAD"
        assert _readable(ours)
        assert ours.recv(100) == b"rest"
    finally:
        ours.close()
        theirs.close()
