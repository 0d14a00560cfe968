"""One SSH connection and its SFTP session, made in stages that fail with the engine's errors.

Why each piece is here:

- The TCP connection is made without blocking the thread for more than a tenth of a second at
  a time, so that :meth:`Interrupter.interrupt` (from another thread) stops a connection
  attempt to a host that drops packets instead of waiting for the timeout.
- paramiko retries a socket send that times out forever, as long as the transport is open. On a
  link that silently stopped carrying packets, with the send buffer full, the engine's thread
  would never come back. :class:`StallGuardSocket` turns "no byte could be sent for
  ``timeout_seconds``" into an error paramiko does not retry.
- paramiko waits without a timeout for the answer to the SFTP subsystem request; a watchdog
  shuts the socket down if that answer does not come in time.
- Every other wait has the configured timeout: handshake, authentication, channel requests,
  and each SFTP request (through the channel's own timeout).
- Shutting the raw socket down (``shutdown(SHUT_RDWR)``) is thread-safe and takes no Python
  lock, so it is how another thread wakes up whatever the engine's thread is blocked in.
- paramiko reads each SSH packet with two ``recv`` calls (its first block, then the rest), and
  the server sends many small packets: a window adjustment for every 96 KiB it takes in, and
  an answer to every request. The TCP socket reads ahead (:class:`StallGuardSocket`), so one
  system call usually brings several packets.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import paramiko
from paramiko.ssh_exception import IncompatiblePeer

from uploader_core.errors import ConfigurationError, EndpointUnavailable, Interrupted

from . import hostkeys
from .settings import SftpSettings, setting

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

log = logging.getLogger(__name__)

ENDPOINT = "sftp"

# How often a blocked connect() looks at the interrupt flag.
_POLL_SECONDS = 0.1
# SSH-level keepalives keep NAT mappings of an idle connection open between passes.
_KEEPALIVE_SECONDS = 30
# What a read-ahead socket asks the kernel for at most: the server's packets are at most 32 KiB.
_READ_AHEAD = 64 * 1024


class Interrupter:
    """Lets another thread make this plugin's blocking network calls return promptly.

    Sockets are registered while they are in use; :meth:`interrupt` sets a flag and shuts every
    registered socket down. A socket registered after the flag was set is refused by
    :meth:`check`, which every stage calls after registering, so no connection attempt slips
    through between the two.
    """

    def __init__(self) -> None:
        self._requested = threading.Event()
        self._sockets: dict[int, socket.socket] = {}
        # Guards the dict only; never held while anything blocks.
        self._lock = threading.Lock()

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def interrupt(self) -> None:
        self._requested.set()
        with self._lock:
            sockets = tuple(self._sockets.values())
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def reset(self) -> None:
        self._requested.clear()

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets[id(sock)] = sock

    def unregister(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.pop(id(sock), None)

    def check(self, what: str) -> None:
        if self._requested.is_set():
            raise Interrupted(f"{what}: abandoned, the uploader is stopping", endpoint=ENDPOINT)


class StallGuardSocket(socket.socket):
    """A socket whose ``send`` gives up after ``stall_timeout`` seconds without progress.

    paramiko sets a 0.1 s timeout on the socket and retries every ``TimeoutError`` of a send;
    this raises a ``ConnectionAbortedError`` instead once nothing could be sent for the whole
    stall timeout, which paramiko reports as a lost connection.

    With ``read_ahead``, ``recv`` takes what has arrived, up to 64 KiB, and hands it out in the
    sizes asked for. Only for a reader that never waits on the socket itself (paramiko's
    transport): what was read ahead is invisible to ``select``.
    """

    def __init__(self, family: int, kind: int, proto: int, stall_timeout: float,
                 fileno: int | None = None, *, read_ahead: bool = False) -> None:
        super().__init__(family, kind, proto, fileno)
        self.stall_timeout = stall_timeout
        self.stalled = False
        self._stalled_since: float | None = None
        self._read_ahead = read_ahead
        self._ahead = b""
        self._ahead_at = 0

    @property
    def reads_ahead(self) -> bool:
        return self._read_ahead

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        if self._ahead_at < len(self._ahead):
            start = self._ahead_at
            self._ahead_at = min(start + bufsize, len(self._ahead))
            return self._ahead[start:self._ahead_at]
        if not self._read_ahead or flags or bufsize >= _READ_AHEAD:
            return super().recv(bufsize, flags)
        data = super().recv(_READ_AHEAD)
        if len(data) <= bufsize:
            return data
        self._ahead, self._ahead_at = data, bufsize
        return data[:bufsize]

    def send(self, data: ReadableBuffer, flags: int = 0, /) -> int:
        try:
            sent = super().send(data, flags)
        except TimeoutError:
            now = time.monotonic()
            if self._stalled_since is None:
                self._stalled_since = now
            elif now - self._stalled_since >= self.stall_timeout:
                self.stalled = True
                raise ConnectionAbortedError(
                    errno.ECONNABORTED,
                    f"nothing could be sent for {self.stall_timeout:g} s",
                ) from None
            raise
        self._stalled_since = None
        return sent


@dataclass
class Session:
    """An authenticated SSH connection and its SFTP session, used by one thread at a time.

    The SSH layer is either paramiko's ``transport`` in this process, or OpenSSH's client in
    ``process`` (:mod:`.openssh`), with ``sock`` the local end of its standard input and output.
    """

    sock: StallGuardSocket
    sftp: paramiko.SFTPClient
    transport: paramiko.Transport | None = None
    process: subprocess.Popen[bytes] | None = None
    # Learnt on this connection: None until a rename showed whether posix-rename works.
    posix_rename: bool | None = None
    # Learnt on this connection: the largest write the server accepts; None until asked.
    write_limit: int | None = None
    # Set when an operation timed out or the link failed: the session must not be used again.
    broken: bool = False
    opened_at: float = field(default_factory=time.monotonic)

    @property
    def cipher(self) -> str:
        if self.transport is not None:
            return self.transport.local_cipher
        return "negotiated by OpenSSH"

    def alive(self) -> bool:
        channel = self.sftp.get_channel()
        if self.transport is not None:
            ssh_alive = self.transport.is_active()
        else:
            ssh_alive = self.process is not None and self.process.poll() is None
        return (not self.broken and not self.sock.stalled and ssh_alive
                and channel is not None and not channel.closed)

    def close(self) -> None:
        """Close everything; never raises, never waits long for the server.

        A healthy session says goodbye properly; a broken one has its socket shut down
        first, so that nothing below waits on a peer that is gone.
        """
        if not self.alive():
            with suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        with suppress(Exception):
            self.sftp.close()
        close_transport(self.transport, self.sock)
        if self.process is not None:
            end_process(self.process)


def end_process(process: subprocess.Popen[bytes]) -> None:
    """Let an SSH client process that has lost its input exit; end it if it does not."""
    for stop, seconds in ((None, 0.5), (process.terminate, 2.0), (process.kill, 2.0)):
        if stop is not None:
            with suppress(OSError):
                stop()
        try:
            process.wait(seconds)
            return
        except subprocess.TimeoutExpired:
            continue


def close_transport(transport: paramiko.Transport | None, sock: socket.socket) -> None:
    """Tear a connection down without waiting on a peer that may be gone."""
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    if transport is not None:
        with suppress(Exception):
            transport.close()
    with suppress(OSError):
        sock.close()


def open_socket(settings: SftpSettings, interrupter: Interrupter) -> StallGuardSocket:
    """Stage 1: a TCP connection to the server, with keepalive; EndpointUnavailable if none."""
    address = f"{settings.host}:{settings.port}"
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, 0, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise EndpointUnavailable(f"cannot resolve SFTP host {settings.host!r}: {exc.strerror}",
                                  endpoint=ENDPOINT, setting=setting("host")) from exc
    last: OSError | None = None
    for family, kind, proto, _name, sockaddr in infos:
        sock = StallGuardSocket(family, kind, proto, settings.timeout, read_ahead=True)
        interrupter.register(sock)
        try:
            interrupter.check(f"connecting to {address}")
            _connect(sock, sockaddr, settings.timeout, interrupter)
        except OSError as exc:
            interrupter.unregister(sock)
            sock.close()
            last = exc
            continue
        except BaseException:
            interrupter.unregister(sock)
            sock.close()
            raise
        _tune(sock, settings.timeout)
        return sock
    interrupter.check(f"connecting to {address}")
    if isinstance(last, TimeoutError):
        reason = f"no answer within {settings.timeout:g} s"
    elif isinstance(last, ConnectionRefusedError):
        reason = "connection refused (is the SFTP server running on that port?)"
    elif last is not None:
        reason = last.strerror or str(last)
    else:
        reason = "no usable address"
    raise EndpointUnavailable(f"cannot connect to SFTP server {address}: {reason}",
                              endpoint=ENDPOINT) from last


def _connect(sock: socket.socket, sockaddr: tuple[object, ...] | str, timeout: float,
             interrupter: Interrupter) -> None:
    sock.setblocking(False)
    code = sock.connect_ex(sockaddr)
    if code not in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
        raise OSError(code, os.strerror(code))
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        while not selector.select(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic()))):
            interrupter.check("connecting")
            if time.monotonic() >= deadline:
                raise TimeoutError("connect timed out")
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))
    sock.setblocking(True)


def _tune(sock: socket.socket, timeout: float) -> None:
    """Keepalive for idle connections, no Nagle delay for the small SFTP requests."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        option = getattr(socket, name, None)
        if option is not None:
            with suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
    if user_timeout is not None:
        # Unacknowledged data (keepalive probes included) for this long ends the connection in
        # the kernel, so a connection that died while idle is seen dead before it is reused.
        # Twice the timeout, so that during an operation the plugin's own timeout, with its
        # clearer message, comes first.
        with suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, user_timeout, int(max(10.0, 2 * timeout) * 1000))


def handshake(sock: StallGuardSocket, settings: SftpSettings,
              known: list[paramiko.PKey], interrupter: Interrupter) -> paramiko.Transport:
    """Stage 2: SSH key exchange with the configured cipher order; no host key check yet."""
    transport = paramiko.Transport(sock)
    options = transport.get_security_options()
    options.ciphers = settings.ciphers
    options.key_types = hostkeys.preferred_key_types(options.key_types, known)
    timeout = settings.timeout
    transport.banner_timeout = timeout
    transport.handshake_timeout = timeout
    transport.auth_timeout = timeout
    transport.channel_timeout = timeout
    transport.clear_to_send_timeout = timeout
    try:
        transport.start_client(timeout=timeout)
    except IncompatiblePeer as exc:
        close_transport(transport, sock)
        text = str(exc)
        raise ConfigurationError(
            f"SFTP server {settings.address} and this client have no algorithm in common: "
            f"{text}",
            setting=setting("ciphers") if "cipher" in text else None, endpoint=ENDPOINT,
        ) from exc
    except (paramiko.SSHException, EOFError, OSError) as exc:
        close_transport(transport, sock)
        interrupter.check(f"SSH handshake with {settings.address}")
        raise EndpointUnavailable(
            f"SSH handshake with {settings.address} failed: {_reason(exc, sock, timeout)}",
            endpoint=ENDPOINT,
        ) from exc
    try:
        # start_client returns quietly when its timeout expires before the key exchange ends;
        # the server's key is there only once it has ended.
        transport.get_remote_server_key()
    except paramiko.SSHException as exc:
        close_transport(transport, sock)
        interrupter.check(f"SSH handshake with {settings.address}")
        raise EndpointUnavailable(
            f"SSH handshake with {settings.address} failed: no answer from the server within "
            f"{timeout:g} s",
            endpoint=ENDPOINT,
        ) from exc
    transport.set_keepalive(_KEEPALIVE_SECONDS)
    return transport


def authenticate(transport: paramiko.Transport, sock: StallGuardSocket,
                 settings: SftpSettings, key: paramiko.PKey, interrupter: Interrupter) -> None:
    """Stage 4 (after the host key check): public key authentication, nothing else."""
    try:
        transport.auth_publickey(settings.username, key)
    except paramiko.AuthenticationException as exc:
        raise ConfigurationError(
            f"SFTP server {settings.address} refused key authentication as "
            f"{settings.username!r} ({setting('username')}) with the key "
            f"{settings.key_path} ({hostkeys.fingerprint(key)}); is its public key in that "
            "account's authorized_keys?",
            setting=setting("ssh_key_path"), endpoint=ENDPOINT,
        ) from exc
    except (paramiko.SSHException, EOFError, OSError) as exc:
        interrupter.check(f"authenticating to {settings.address}")
        raise EndpointUnavailable(
            f"authentication to {settings.address} failed: "
            f"{_reason(exc, sock, settings.timeout)}",
            endpoint=ENDPOINT,
        ) from exc
    if not transport.is_authenticated():
        raise ConfigurationError(
            f"SFTP server {settings.address} wants more than a key to authenticate "
            f"{settings.username!r}; only key authentication is supported",
            setting=setting("username"), endpoint=ENDPOINT,
        )


def open_sftp(transport: paramiko.Transport, sock: StallGuardSocket,
              settings: SftpSettings, interrupter: Interrupter) -> paramiko.SFTPClient:
    """Stage 5: the SFTP subsystem on a new channel, every request of which has a timeout."""
    timeout = settings.timeout
    what = f"starting SFTP on {settings.address}"
    try:
        channel = transport.open_session(timeout=timeout)
        channel.settimeout(timeout)
        with _watchdog(sock, timeout) as expired:
            try:
                channel.invoke_subsystem("sftp")
            except paramiko.SSHException as exc:
                if expired.is_set():
                    raise TimeoutError(f"no answer within {timeout:g} s") from exc
                if transport.is_active():
                    raise ConfigurationError(
                        f"SFTP server {settings.address} refused to start SFTP for "
                        f"{settings.username!r}: {exc}",
                        setting=setting("username"), endpoint=ENDPOINT,
                    ) from exc
                raise
        return paramiko.SFTPClient(channel)
    except ConfigurationError:
        raise
    except paramiko.SFTPError as exc:
        raise ConfigurationError(f"{what}: the server did not answer as an SFTP server: {exc}",
                                 endpoint=ENDPOINT) from exc
    except (paramiko.SSHException, EOFError, OSError) as exc:
        interrupter.check(what)
        raise EndpointUnavailable(f"{what} failed: {_reason(exc, sock, timeout)}",
                                  endpoint=ENDPOINT) from exc


@contextmanager
def _watchdog(sock: socket.socket, seconds: float) -> Iterator[threading.Event]:
    """Shut ``sock`` down if the block does not finish within ``seconds``."""
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield expired
    finally:
        timer.cancel()
    if expired.is_set():
        raise TimeoutError(f"no answer within {seconds:g} s")


def _reason(exc: BaseException, sock: StallGuardSocket, timeout: float) -> str:
    if sock.stalled or isinstance(exc, TimeoutError):
        return f"no answer from the server within {timeout:g} s"
    text = str(exc) or type(exc).__name__
    return text


def connect(settings: SftpSettings, key: paramiko.PKey, interrupter: Interrupter) -> Session:
    """All stages, for a session the plugin keeps and reuses across jobs."""
    known = hostkeys.load_known_keys(settings)
    sock = open_socket(settings, interrupter)
    transport: paramiko.Transport | None = None
    try:
        transport = handshake(sock, settings, known, interrupter)
        hostkeys.verify(settings, transport.get_remote_server_key(), known)
        authenticate(transport, sock, settings, key, interrupter)
        sftp = open_sftp(transport, sock, settings, interrupter)
    except BaseException:
        interrupter.unregister(sock)
        close_transport(transport, sock)
        raise
    session = Session(sock=sock, sftp=sftp, transport=transport)
    log.info("connected to SFTP server %s as %s (%s, cipher %s)", settings.address,
             settings.username, transport.remote_version, session.cipher)
    return session
