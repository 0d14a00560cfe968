"""SSH channel data sent without paramiko's per-packet copies, on AES-GCM connections.

Why this exists: for every channel data packet (up to ~32 KiB) paramiko copies the data into a
``Message``, copies it out again, concatenates it behind the packet header, reads the random
padding with one ``os.urandom`` call (a system call per packet), slices the packet to encrypt
it and concatenates the length with the ciphertext: five copies of the data and a syscall, all
on the uploading thread. For the video data of an upload that is most of the client's CPU.
Here each packet is built once in a reusable buffer (one copy of the data), encrypted from it
into a second reusable buffer, and written from there; the padding is sliced from a pool of
random bytes that is refilled from ``os.urandom`` every 4 KiB. And where paramiko makes one
``send`` system call per packet, the packets that the send window allows (up to
``_BATCH_BYTES``) go to the socket in one: on a loopback or LAN link each call costs about as
much kernel time as the bytes it carries, and it wakes the server's sshd each time.

Only channel data on a connection whose outbound cipher is AES-GCM (paramiko's "aead" mode)
takes this path, without compression or packet dumping; everything else, and every paramiko
whose internals differ from what is checked here, goes through ``Channel.send`` unchanged. The
bytes on the wire are the ones paramiko would send (apart from the random padding).

paramiko internals this relies on, all checked on each connection before the first use:

- ``Channel``: ``lock``, ``closed``, ``remote_chanid``, ``_wait_for_send_window`` (takes the
  send window and caps a packet at the peer's maximum, honouring the channel's timeout).
- ``Transport``: ``packetizer``, ``active``, ``clear_to_send`` (an Event cleared during key
  exchange), ``clear_to_send_lock``, ``clear_to_send_timeout``, ``_log``: the same waiting as
  ``Transport._send_user_message``, so that no data packet goes out during a key exchange.
- ``Packetizer``, in its instance ``__dict__`` under the mangled ``_Packetizer__*`` names:
  ``write_lock``, ``block_engine_out`` (the AESGCM object), ``block_size_out``, ``aead_out``,
  ``iv_out``, ``compress_engine_out``, ``dump_packets``, ``sequence_number_out``,
  ``sent_bytes``, ``sent_packets``, ``need_rekey``, ``received_bytes_overflow``,
  ``received_packets_overflow``; and ``_initial_kex_done``, ``REKEY_BYTES``,
  ``REKEY_PACKETS``, ``_inc_iv_counter``, ``write_all``, ``_trigger_rekey``, ``_log``,
  ``send_message``. The packet is encrypted, counted and written exactly as
  ``Packetizer.send_message`` does it, with every piece of state read afresh under the write
  lock for each packet, since a key exchange replaces the cipher object, the IV and the
  counters.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import threading
import time
import weakref
from typing import Any, cast

import paramiko
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from paramiko.message import Message
from paramiko.ssh_exception import SSHException

# SSH_MSG_CHANNEL_DATA (RFC 4254).
_MSG_CHANNEL_DATA = 94

# The Packetizer's private state, under its mangled names in the instance's ``__dict__``: read
# and written there directly, which costs less per packet than getattr with a built name.
_WRITE_LOCK = "_Packetizer__write_lock"
_ENGINE = "_Packetizer__block_engine_out"
_BLOCK_SIZE = "_Packetizer__block_size_out"
_AEAD = "_Packetizer__aead_out"
_IV = "_Packetizer__iv_out"
_COMPRESS = "_Packetizer__compress_engine_out"
_DUMP = "_Packetizer__dump_packets"
_SEQUENCE = "_Packetizer__sequence_number_out"
_SENT_BYTES = "_Packetizer__sent_bytes"
_SENT_PACKETS = "_Packetizer__sent_packets"
_NEED_REKEY = "_Packetizer__need_rekey"
_RECEIVED_BYTES_OVERFLOW = "_Packetizer__received_bytes_overflow"
_RECEIVED_PACKETS_OVERFLOW = "_Packetizer__received_packets_overflow"
_PACKETIZER_STATE = (_WRITE_LOCK, _ENGINE, _BLOCK_SIZE, _AEAD, _IV, _COMPRESS, _DUMP, _SEQUENCE,
                     _SENT_BYTES, _SENT_PACKETS, _NEED_REKEY, _RECEIVED_BYTES_OVERFLOW,
                     _RECEIVED_PACKETS_OVERFLOW, "_initial_kex_done")
_PACKETIZER_OTHER = ("REKEY_BYTES", "REKEY_PACKETS", "_inc_iv_counter", "write_all",
                     "_trigger_rekey", "_log", "send_message")
_TRANSPORT_NEEDS = ("packetizer", "active", "clear_to_send", "clear_to_send_lock",
                    "clear_to_send_timeout", "_log")
_CHANNEL_NEEDS = ("lock", "closed", "remote_chanid", "_wait_for_send_window",
                  "out_window_size", "out_max_packet_size")

# Before the encrypted part: the packet length, which AES-GCM leaves in the clear and
# authenticates as associated data (RFC 5647 section 7.3).
_LENGTH = struct.Struct(">I")
# The start of the encrypted part: padding length, message type, recipient channel, data length.
_HEADER = struct.Struct(">BBII")
_TAG = 16
# Of a packet, besides its data and its padding (3 + block size bytes at most): length, header,
# tag.
_OVERHEAD = _LENGTH.size + _HEADER.size + _TAG
# Random bytes read at a time for the padding (4 to 19 bytes a packet): one syscall per couple
# of hundred packets instead of one per packet.
_POOL_SIZE = 4096
_SEQUENCE_MASK = 0xFFFFFFFF
# Channel data written to the socket in one call, at most: a few packets, as OpenSSH's client
# writes what it has buffered at once.
_BATCH_BYTES = 256 * 1024
# What paramiko keeps spare in each channel packet for the packet's own header.
CHANNEL_SPARE = 64

_encrypt_into_available = hasattr(AESGCM, "encrypt_into")  # cryptography >= 45


@dataclasses.dataclass
class LeanStats:
    """What the lean path sent on one connection; for tests and diagnostics."""

    packets: int = 0
    data_bytes: int = 0
    writes: int = 0  # calls to the socket that carried them
    # Outbound keys it has sent under: one more after each key re-exchange it sent through.
    keys: int = 0


class _LeanSender:
    """The reusable buffers and random pool of one connection; used under its write lock."""

    def __init__(self, packetizer: Any) -> None:
        self.packetizer = packetizer
        # The live attribute dictionary: every read below sees the current value.
        self.state: dict[str, Any] = vars(packetizer)
        self.write_lock: threading.RLock = self.state[_WRITE_LOCK]
        self.stats = LeanStats()
        self._plain = bytearray()
        self._wire = bytearray()
        self._plain_view = memoryview(self._plain)
        self._wire_view = memoryview(self._wire)
        self._pool = memoryview(b"")
        self._pool_used = 0
        self._last_engine: object = None

    def applies(self) -> bool:
        """Whether the outbound state is one this path can send under (any thread may ask)."""
        state = self.state
        return (state[_AEAD] is True
                and isinstance(state[_ENGINE], AESGCM)
                and state[_COMPRESS] is None
                and not state[_DUMP])

    def _padding(self, count: int) -> memoryview:
        if self._pool_used + count > len(self._pool):
            self._pool = memoryview(os.urandom(_POOL_SIZE))
            self._pool_used = 0
        start = self._pool_used
        self._pool_used = start + count
        return self._pool[start:start + count]

    def _buffers(self, plain_size: int, wire_size: int) -> tuple[memoryview, memoryview]:
        if len(self._plain) < plain_size:
            # Released first: a bytearray with a live export cannot be replaced.
            self._plain_view.release()
            self._plain = bytearray(plain_size)
            self._plain_view = memoryview(self._plain)
        if len(self._wire) < wire_size:
            self._wire_view.release()
            self._wire = bytearray(wire_size)
            self._wire_view = memoryview(self._wire)
        return self._plain_view, self._wire_view

    def send_packets(self, remote_chanid: int, pieces: _Pieces, sizes: list[int]) -> None:
        """Build, encrypt and count one CHANNEL_DATA packet for each of ``sizes`` (taken from
        ``pieces``), as paramiko's ``Packetizer.send_message`` would, and write them all to
        the socket at once. The caller holds the transport's ``clear_to_send_lock``."""
        pk = self.packetizer
        state = self.state
        with self.write_lock:
            if not self.applies():
                # The cipher changed at a key exchange since the caller looked: paramiko's own
                # way, for these packets (their window is already taken).
                for count in sizes:
                    message = Message()
                    message.add_byte(bytes((_MSG_CHANNEL_DATA,)))
                    message.add_int(remote_chanid)
                    message.add_string(pieces.take_bytes(count))
                    pk.send_message(message)
                return
            engine: AESGCM = state[_ENGINE]
            block_size: int = state[_BLOCK_SIZE]
            plain, wire = self._buffers(max(sizes) + _HEADER.size + block_size + 4,
                                        sum(sizes) + len(sizes) * (_OVERHEAD + 3 + block_size))
            at = 0
            for count in sizes:
                iv: bytes = state[_IV]
                payload = _HEADER.size - 1 + count  # type, channel, length, data
                # As paramiko's _build_packet under AEAD: the length field is not counted.
                padding = 3 + block_size - ((payload + 4) % block_size)
                packet_length = 1 + payload + padding
                _HEADER.pack_into(plain, 0, padding, _MSG_CHANNEL_DATA, remote_chanid, count)
                end = pieces.copy_into(plain, _HEADER.size, count)
                plain[end:packet_length] = self._padding(padding)

                _LENGTH.pack_into(wire, at, packet_length)
                length = wire[at:at + _LENGTH.size]
                size = _LENGTH.size + packet_length + _TAG
                if _encrypt_into_available:
                    engine.encrypt_into(iv, plain[:packet_length], length,
                                        wire[at + _LENGTH.size:at + size])
                else:
                    wire[at + _LENGTH.size:at + size] = engine.encrypt(
                        iv, plain[:packet_length], length)
                state[_IV] = pk._inc_iv_counter(iv)
                at += size

                next_seq = (state[_SEQUENCE] + 1) & _SEQUENCE_MASK
                if next_seq == 0 and not state["_initial_kex_done"]:
                    raise SSHException("Sequence number rolled over during initial kex!")
                state[_SEQUENCE] = next_seq
                sent_bytes: int = state[_SENT_BYTES] + size
                sent_packets: int = state[_SENT_PACKETS] + 1
                state[_SENT_BYTES] = sent_bytes
                state[_SENT_PACKETS] = sent_packets
                if ((sent_packets >= pk.REKEY_PACKETS or sent_bytes >= pk.REKEY_BYTES)
                        and not state[_NEED_REKEY]):
                    # Only asked once; the transport's thread starts the key exchange, and
                    # packets already built go out under the old keys, as they may.
                    pk._log(logging.DEBUG,
                            f"Rekeying (hit {sent_packets} packets, {sent_bytes} bytes sent)")
                    state[_RECEIVED_BYTES_OVERFLOW] = 0
                    state[_RECEIVED_PACKETS_OVERFLOW] = 0
                    pk._trigger_rekey()

                stats = self.stats
                stats.packets += 1
                stats.data_bytes += count
                if engine is not self._last_engine:
                    self._last_engine = engine
                    stats.keys += 1
            pk.write_all(wire[:at])
            self.stats.writes += 1


class _Pieces:
    """Buffers sent one after the other as one stream of channel data."""

    def __init__(self, pieces: tuple[memoryview, ...]) -> None:
        self._pieces = [piece for piece in pieces if len(piece)]
        self.left = sum(len(piece) for piece in self._pieces)

    def copy_into(self, buffer: memoryview, at: int, count: int) -> int:
        """Copy the next ``count`` bytes to ``buffer[at:]``; where they end there."""
        self.left -= count
        while count:
            piece = self._pieces[0]
            n = min(count, len(piece))
            buffer[at:at + n] = piece[:n]
            at += n
            count -= n
            if n == len(piece):
                self._pieces.pop(0)
            else:
                self._pieces[0] = piece[n:]
        return at

    def take_bytes(self, count: int) -> bytes:
        chunk = bytearray(count)
        self.copy_into(memoryview(chunk), 0, count)
        return bytes(chunk)


# One sender per packetizer (that is, per connection), or None where paramiko's internals are
# not the ones this module knows.
_senders: weakref.WeakKeyDictionary[Any, _LeanSender | None] = weakref.WeakKeyDictionary()
_senders_lock = threading.Lock()


def _has_all(obj: object, names: tuple[str, ...]) -> bool:
    return all(hasattr(obj, name) for name in names)


def _sender(transport: Any) -> _LeanSender | None:
    packetizer = getattr(transport, "packetizer", None)
    if packetizer is None:
        return None
    try:
        return _senders[packetizer]
    except KeyError:
        pass
    with _senders_lock:
        if packetizer not in _senders:
            state = getattr(packetizer, "__dict__", {})
            usable = (_has_all(transport, _TRANSPORT_NEEDS)
                      and all(name in state for name in _PACKETIZER_STATE)
                      and _has_all(packetizer, _PACKETIZER_OTHER))
            _senders[packetizer] = _LeanSender(packetizer) if usable else None
        return _senders[packetizer]


def stats(transport: paramiko.Transport) -> LeanStats | None:
    """A snapshot of what the lean path sent on ``transport``'s connection so far; None if it
    was never tried there, or cannot be with this paramiko."""
    packetizer = getattr(transport, "packetizer", None)
    sender = _senders.get(packetizer) if packetizer is not None else None
    if sender is None:
        return None
    # Without the write lock, which a stalled send can hold for long: while packets are going
    # out, the numbers may be one packet apart.
    return dataclasses.replace(sender.stats)


def send_all(channel: paramiko.Channel, *pieces: memoryview) -> None:
    """Send the bytes of ``pieces``, one after the other, as the channel's data; raise
    :class:`EOFError` if the channel closes first. The lean path where the connection allows
    it, ``channel.send`` otherwise."""
    chan = cast(Any, channel)
    send_pieces = getattr(chan, "send_pieces", None)
    if send_pieces is not None:  # not paramiko's channel: a local pipe (see .openssh)
        send_pieces(pieces)
        return
    transport = chan.transport
    sender = _sender(transport) if transport is not None else None
    if sender is None or not sender.applies() or not _has_all(chan, _CHANNEL_NEEDS):
        _send_all_through_paramiko(chan, pieces)
        return
    data = _Pieces(pieces)
    while data.left:
        sizes = _take_window(chan, data.left)
        if not sizes:
            raise EOFError("the SFTP channel is closed")
        remote_chanid: int = chan.remote_chanid
        # The channel lock is released before waiting for a key exchange, as paramiko does:
        # holding it there can deadlock the transport's thread.
        if not _clear_to_send(transport):
            return  # the connection is dead: paramiko drops the data too, and the reply never comes
        try:
            sender.send_packets(remote_chanid, data, sizes)
        finally:
            transport.clear_to_send_lock.release()


def _take_window(chan: Any, want: int) -> list[int]:
    """The send window for up to ``_BATCH_BYTES`` of ``want`` bytes, as ``Channel._send`` takes
    it: the size of each packet. Waits (with the channel's timeout) only for the first; empty
    when the channel is closed or at EOF."""
    want = min(want, _BATCH_BYTES)
    sizes: list[int] = []
    with chan.lock:
        if chan.closed:
            raise OSError("Socket is closed")  # what Channel._send raises
        taken = 0
        while taken < want:
            if sizes and chan.out_window_size == 0:
                break
            size: int = chan._wait_for_send_window(want - taken)
            if size == 0:
                break
            sizes.append(size)
            taken += size
    return sizes


def _clear_to_send(transport: Any) -> bool:
    """``Transport._send_user_message``'s wait: no user data while keys are being exchanged.

    True with ``clear_to_send_lock`` held; False when the connection is dead.
    """
    start = time.time()
    while True:
        transport.clear_to_send.wait(0.1)
        if not transport.active:
            transport._log(logging.DEBUG, "Dropping user packet because connection is dead.")
            return False
        transport.clear_to_send_lock.acquire()
        if transport.clear_to_send.is_set():
            return True
        transport.clear_to_send_lock.release()
        if time.time() > start + transport.clear_to_send_timeout:
            raise SSHException("Key-exchange timed out waiting for key negotiation")


def _send_all_through_paramiko(chan: Any, pieces: tuple[memoryview, ...]) -> None:
    # The first piece (a request's header) goes out with the start of the next, in one packet,
    # rather than as a small packet of its own.
    if len(pieces) > 1 and len(pieces[0]) < chan.out_max_packet_size - CHANNEL_SPARE:
        room = chan.out_max_packet_size - CHANNEL_SPARE - len(pieces[0])
        joined = memoryview(bytes(pieces[0]) + bytes(pieces[1][:room]))
        pieces = (joined, pieces[1][room:], *pieces[2:])
    for piece in pieces:
        while piece:
            # paramiko sends any buffer; its type hints say bytes.
            sent: int = chan.send(piece)
            if sent <= 0:
                raise EOFError("the SFTP channel is closed")
            piece = piece[sent:]


__all__ = ["LeanStats", "send_all", "stats"]
