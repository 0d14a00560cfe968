"""What a failed SFTP operation means to the engine.

paramiko reports an SFTP status as a bare ``OSError``: with ``errno`` ENOENT or EACCES for the
two statuses it maps, without one for every other status ("Failure", "Operation
unsupported", ...), and it reports a broken connection with ``EOFError``, ``SSHException``,
``TimeoutError`` or errno-carrying socket errors. The two kinds are told apart by whether
the connection is still alive, so that "permission denied" becomes a configuration error
naming the directory setting while a dropped link becomes a transient endpoint error.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import paramiko

from uploader_core.errors import (
    ConfigurationError,
    EndpointUnavailable,
    Interrupted,
    TransientError,
    UploaderError,
)

from .connection import ENDPOINT, Interrupter, Session

_DENIED = (errno.EACCES, errno.EPERM)


class ConnectionLost(EndpointUnavailable):
    """The connection broke during an operation (not a timeout, not a refusal).

    A job that meets this on a connection reused from an earlier job is tried once more on a
    new connection: the server may simply have restarted since.
    """


@dataclass(frozen=True)
class RemoteOp:
    """One remote operation, described for messages.

    ``setting`` is the directory setting involved; ``missing`` is the message when "no such
    file" means that directory is missing (None when it means something vanished meanwhile);
    ``failure`` is the error type for a bare SFTP "Failure", with ``hint`` appended.
    """

    what: str
    setting: str | None = None
    missing: str | None = None
    failure: type[TransientError] = TransientError
    hint: str = ""


def is_sftp_status(exc: BaseException, session: Session) -> bool:
    """True for an error status answered by a server that is still connected."""
    return (isinstance(exc, OSError) and not isinstance(exc, TimeoutError)
            and exc.errno in (None, errno.ENOENT, *_DENIED) and session.alive())


def status_text(exc: OSError) -> str:
    if exc.strerror:
        return exc.strerror
    return str(exc.args[0]) if exc.args else "Failure"


def translate(exc: BaseException, op: RemoteOp, session: Session, interrupter: Interrupter,
              timeout: float) -> UploaderError:
    """The engine's error for ``exc`` raised by ``op``; marks the session broken if it is."""
    if isinstance(exc, UploaderError):
        return exc
    if interrupter.requested:
        session.broken = True
        return Interrupted(f"{op.what}: abandoned, the uploader is stopping", endpoint=ENDPOINT)
    if session.sock.stalled or isinstance(exc, TimeoutError):
        session.broken = True
        return EndpointUnavailable(
            f"{op.what}: no answer from the SFTP server within {timeout:g} s "
            "(the connection will be made again)",
            endpoint=ENDPOINT,
        )
    if is_sftp_status(exc, session):
        assert isinstance(exc, OSError)
        if exc.errno in _DENIED:
            return ConfigurationError(f"{op.what}: permission denied by the SFTP server",
                                      setting=op.setting, endpoint=ENDPOINT)
        if exc.errno == errno.ENOENT:
            if op.missing:
                return ConfigurationError(op.missing, setting=op.setting, endpoint=ENDPOINT)
            return TransientError(f"{op.what}: no such file on the SFTP server",
                                  endpoint=ENDPOINT)
        return op.failure(f"{op.what}: the SFTP server answered {status_text(exc)!r}{op.hint}",
                          endpoint=ENDPOINT)
    session.broken = True
    if isinstance(exc, (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError)):
        reason = str(exc) or type(exc).__name__
        return ConnectionLost(f"{op.what}: connection to the SFTP server lost ({reason})",
                              endpoint=ENDPOINT)
    return TransientError(f"{op.what}: unexpected {type(exc).__name__}: {exc}",
                          endpoint=ENDPOINT)
