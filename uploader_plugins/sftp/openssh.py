"""``transport: openssh``: paramiko's SFTP client over OpenSSH's own client (``ssh -s sftp``).

Why: with paramiko's transport, every SSH packet is encrypted, framed and parsed in Python,
under the GIL, on the threads that also upload, hash and talk to the database. That is most of
the uploader's CPU per GB, and on a device with two cores it competes with the analyzer. Run
by OpenSSH's client, the same work is done in C, in a process of its own that can use another
core; this process only writes SFTP requests into a local socket.

What stays the same: the SFTP requests (paramiko's :class:`~paramiko.SFTPClient` and this
plugin's pipeline), resumed uploads, the bandwidth cap, a timeout on every request, and
interrupts (the local socket is shut down, and the client exits when its input ends).

What OpenSSH does instead of this plugin, from the same settings: host key checking against
``known_hosts_path`` (``strict``: ``StrictHostKeyChecking=yes``; ``accept-new``: the same name
in OpenSSH), key authentication with ``ssh_key_path`` only, the cipher preference, keepalives
and re-keying. It runs with ``-F /dev/null`` (no user or system configuration), in batch mode
(it never prompts, so the key cannot have a passphrase), and logs only errors; what it prints
is read back to say why a connection failed.
"""

from __future__ import annotations

import logging
import math
import select
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO

import paramiko

from uploader_core.errors import ConfigurationError, EndpointUnavailable, UploaderError

from . import hostkeys
from .connection import ENDPOINT, Interrupter, Session, StallGuardSocket, end_process
from .settings import ACCEPT_NEW, SftpSettings, setting, ssh_client, unreadable_key

log = logging.getLogger(__name__)

# OpenSSH's messages (at LogLevel ERROR) and what each means, first match wins.
_HOST_KEY = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED",
             "host key is known", "Host key for")
_AUTH = ("Permission denied",)
_KEY_FILE = ("UNPROTECTED PRIVATE KEY FILE", "Load key", "no such identity",
             "bad permissions")
_CIPHER = ("no matching cipher",)
_SUBSYSTEM = ("subsystem request failed",)
_REFUSED = ("Connection refused",)
_UNRESOLVED = ("Could not resolve hostname",)
_TIMED_OUT = ("timed out", "Connection timed out during banner exchange")
# What accept-new did, after a connection that succeeded.
_ADDED = "Permanently added"
_NOT_ADDED = "Failed to add the host"

# The local socket's send buffer towards ssh: a few of the largest write requests.
_SEND_BUFFER = 1 << 20


def _path_value(path: Path) -> str:
    """A path as an option's value: quoted (spaces) and with ``%`` escaped (ssh expands
    ``%`` tokens in file names)."""
    return '"' + str(path).replace("%", "%%") + '"'


def ssh_arguments(settings: SftpSettings) -> list[str]:
    """The ``ssh`` command line for one SFTP session with these settings."""
    checking = "accept-new" if settings.host_key_policy == ACCEPT_NEW else "yes"
    timeout = max(1, math.ceil(settings.timeout))
    return [
        ssh_client(),
        "-F", "/dev/null",
        "-T", "-x", "-a",
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-i", str(settings.key_path).replace("%", "%%"),
        "-o", f"UserKnownHostsFile={_path_value(settings.known_hosts_path)}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"StrictHostKeyChecking={checking}",
        "-o", "UpdateHostKeys=no",
        "-o", f"ConnectTimeout={timeout}",
        # A silent link ends the client within about the configured timeout.
        "-o", f"ServerAliveInterval={max(1, math.ceil(settings.timeout / 3))}",
        "-o", "ServerAliveCountMax=3",
        "-o", f"Ciphers={','.join(settings.ciphers)}",
        # INFO, not ERROR: the reasons a connection ends during the key exchange ("no
        # matching cipher", "Connection closed by") and what accept-new recorded, or could
        # not, are logged at INFO.
        "-o", "LogLevel=INFO",
        "-p", str(settings.port),
        "-l", settings.username,
        "-s", "--", settings.host, "sftp",
    ]


class PipeChannel:
    """The parts of a paramiko ``Channel`` that the SFTP client and this plugin use, over the
    local socket connected to the SSH client's standard input and output."""

    # No paramiko transport: :func:`.fastsend.send_all` sends through :meth:`send_pieces`.
    transport = None
    # OpenSSH's default channel packet size (CHAN_SES_PACKET_DEFAULT): write requests are
    # sized in whole packets of it, as on paramiko's channel.
    out_max_packet_size = 32768

    def __init__(self, sock: StallGuardSocket) -> None:
        self.sock = sock
        self.closed = False

    def get_name(self) -> str:
        return "openssh"

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def send(self, data: bytes | memoryview) -> int:
        return self.sock.send(data)

    def send_pieces(self, pieces: Sequence[memoryview]) -> None:
        for piece in pieces:
            self.sock.sendall(piece)

    def recv(self, size: int) -> bytes:
        return self.sock.recv(size)

    def recv_ready(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        self.closed = True
        with suppress(OSError):
            self.sock.close()


def connect(settings: SftpSettings, interrupter: Interrupter) -> Session:
    """Start ``ssh`` for an SFTP session; the engine's error for whatever stops it."""
    if settings.host_key_policy == ACCEPT_NEW:
        hostkeys.prepare_file(settings)
    ours, theirs = socket.socketpair()
    # Room for a few write requests in the socket: with the default (about 200 KiB, less than
    # one request of 255 KiB) every request waits for ssh to drain the last one, and the two
    # processes take turns instead of running side by side. The kernel caps the size at
    # net.core.wmem_max.
    with suppress(OSError):
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
    sock = StallGuardSocket(ours.family, ours.type, 0, settings.timeout, fileno=ours.detach())
    interrupter.register(sock)
    process: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryFile() as errors:
            interrupter.check(f"connecting to {settings.address}")
            try:
                process = subprocess.Popen(ssh_arguments(settings), stdin=theirs.fileno(),
                                           stdout=theirs.fileno(), stderr=errors,
                                           close_fds=True, start_new_session=True)
            except OSError as exc:
                raise ConfigurationError(f"cannot run OpenSSH's client: {exc}",
                                         setting=setting("transport"),
                                         endpoint=ENDPOINT) from exc
            finally:
                theirs.close()
            # Until the SFTP server answers, this covers the connection, the key exchange
            # and authentication; then every request.
            sock.settimeout(settings.timeout)
            try:
                sftp = paramiko.SFTPClient(PipeChannel(sock))  # type: ignore[arg-type]
            except (EOFError, OSError, paramiko.SSHException) as exc:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                end_process(process)
                interrupter.check(f"connecting to {settings.address}")
                raise failure(settings, _read(errors),
                              timed_out=isinstance(exc, TimeoutError)) from exc
            said = _read(errors)
            if _NOT_ADDED in said:
                # Accepting a key that was not recorded would accept any key next time.
                raise hostkeys.cannot_record(settings, _quote(said, _NOT_ADDED))
    except BaseException:
        interrupter.unregister(sock)
        with suppress(OSError):
            sock.close()
        if process is not None:
            end_process(process)
        raise
    if _ADDED in said:
        log.warning("recorded the host key of %s (%s) in %s on first connection",
                    settings.address, _quote(said, _ADDED), settings.known_hosts_path)
    log.info("connected to SFTP server %s as %s (OpenSSH client, cipher %s preferred)",
             settings.address, settings.username, settings.ciphers[0])
    return Session(sock=sock, sftp=sftp, process=process)


def _quote(said: str, marker: str) -> str:
    """The line of what ssh said that holds ``marker``."""
    return next((line.strip() for line in said.splitlines() if marker in line), marker)


def _read(errors: IO[bytes]) -> str:
    errors.seek(0)
    return errors.read(16384).decode("utf-8", "replace")


def failure(settings: SftpSettings, stderr: str, *, timed_out: bool = False) -> UploaderError:
    """The engine's error for an SSH client that ended before SFTP started, from what it
    printed (``timed_out``: the server's SFTP greeting did not come in time)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = "; ".join(lines[-3:]) if lines else "no message"
    address = settings.address

    def has(markers: tuple[str, ...]) -> bool:
        return any(marker in stderr for marker in markers)

    if has(_HOST_KEY):
        return ConfigurationError(
            f"SFTP server {address}: OpenSSH refused its host key against "
            f"{settings.known_hosts_path} ({said})",
            setting=setting("known_hosts_path"), endpoint=ENDPOINT)
    if has(_KEY_FILE):
        return ConfigurationError(f"OpenSSH cannot use the private key {settings.key_path}: "
                                  f"{said}", setting=setting("ssh_key_path"), endpoint=ENDPOINT)
    if has(_AUTH):
        return ConfigurationError(
            f"SFTP server {address} refused key authentication as {settings.username!r} "
            f"({setting('username')}) with the key {settings.key_path}; is its public key in "
            f"that account's authorized_keys? ({said})",
            setting=setting("ssh_key_path"), endpoint=ENDPOINT)
    if has(_CIPHER):
        return ConfigurationError(
            f"SFTP server {address} and OpenSSH's client have no cipher in common ({said})",
            setting=setting("ciphers"), endpoint=ENDPOINT)
    if has(_SUBSYSTEM):
        return ConfigurationError(
            f"SFTP server {address} refused to start SFTP for {settings.username!r} ({said})",
            setting=setting("username"), endpoint=ENDPOINT)
    if has(_UNRESOLVED):
        return EndpointUnavailable(f"cannot resolve SFTP host {settings.host!r} ({said})",
                                   endpoint=ENDPOINT, setting=setting("host"))
    if has(_REFUSED):
        return EndpointUnavailable(
            f"cannot connect to SFTP server {address}: connection refused (is the SFTP server "
            "running on that port?)", endpoint=ENDPOINT)
    if timed_out or has(_TIMED_OUT):
        return EndpointUnavailable(
            f"cannot connect to SFTP server {address}: no answer from the server within "
            f"{settings.timeout:g} s", endpoint=ENDPOINT)
    return EndpointUnavailable(f"SSH connection to {address} failed: {said}",
                               endpoint=ENDPOINT)


def check_key(settings: SftpSettings, passphrase: str | None) -> None:
    """Refuse at start-up what OpenSSH's client would refuse at every connection: a key it
    would have to ask a passphrase for, or one that others may read."""
    where = setting("ssh_key_path")
    if passphrase is not None:
        raise ConfigurationError(
            f"{setting('ssh_key_passphrase')}: transport openssh cannot use a passphrase "
            "(OpenSSH's client runs in batch mode); use a key without one, or transport "
            "paramiko", setting=setting("ssh_key_passphrase"))
    path = settings.key_path
    try:
        mode = path.stat().st_mode
        paramiko.PKey.from_path(path)
    except OSError as exc:
        raise unreadable_key(path, exc) from exc
    except (TypeError, paramiko.PasswordRequiredException) as exc:
        raise ConfigurationError(
            f"private key {path} is encrypted, and transport openssh cannot use a passphrase; "
            "use a key without one, or transport paramiko", setting=where) from exc
    except (ValueError, paramiko.SSHException):
        pass  # a key type paramiko does not read may still be one OpenSSH does
    if mode & 0o077:
        raise ConfigurationError(
            f"private key {path} may be read by other users (mode {mode & 0o777:04o}), and "
            f"OpenSSH's client refuses such a key: chmod 600 {path}", setting=where)
