"""Host key verification against an OpenSSH ``known_hosts`` file, done by the plugin itself.

paramiko's ``SSHClient`` policies are not used: the plugin needs OpenSSH's exact semantics
(``StrictHostKeyChecking=yes`` and ``accept-new``, ``[host]:port`` names for other ports,
hashed names) and messages that tell an operator what to do. A key that differs from the
recorded one is refused under every policy: that is the one case where carrying on could
hand the uploads to someone else.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import paramiko

from uploader_core.errors import ConfigurationError

from .settings import ACCEPT_NEW, SftpSettings, setting

log = logging.getLogger(__name__)

# The workers of one engine connect at once, each with the keys it read before: only one may
# record a new host's key.
_recording = threading.Lock()


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint, as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _key_type(algorithm: str) -> str:
    """The known_hosts key type that a host key algorithm name signs with."""
    if algorithm.startswith("rsa-sha2-"):
        return "ssh-rsa"
    return algorithm.removesuffix("-cert-v01@openssh.com")


def load_known_keys(settings: SftpSettings) -> list[paramiko.PKey]:
    """The keys recorded for this server, by its OpenSSH name; none if the file is absent."""
    path = settings.known_hosts_path
    known = paramiko.HostKeys()
    try:
        known.load(str(path))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigurationError(f"cannot read known hosts file {path}: {exc.strerror}",
                                 setting=setting("known_hosts_path"), endpoint="sftp") from exc
    except Exception as exc:  # paramiko raises InvalidHostKey for a corrupt line
        raise ConfigurationError(f"known hosts file {path} is not valid: {exc}",
                                 setting=setting("known_hosts_path"), endpoint="sftp") from exc
    entries = known.lookup(settings.address)
    return list(entries.values()) if entries else []


def preferred_key_types(offered: Sequence[str], known: Sequence[paramiko.PKey]) -> list[str]:
    """Host key algorithms with those of the recorded keys first, as OpenSSH orders them.

    Without this, a server with several host keys could present one of a type that is not
    recorded yet, which would look like a changed key.
    """
    known_types = {key.get_name() for key in known}
    first = [name for name in offered if _key_type(name) in known_types]
    return first + [name for name in offered if name not in first]


def verify(settings: SftpSettings, server_key: paramiko.PKey,
           known: Sequence[paramiko.PKey]) -> str:
    """Accept ``server_key`` or raise ConfigurationError; return how it was accepted."""
    presented = server_key.asbytes()
    if any(key.asbytes() == presented for key in known):
        return "known"
    path = settings.known_hosts_path
    offered = f"{server_key.get_name()} {fingerprint(server_key)}"
    if known:
        recorded = ", ".join(f"{k.get_name()} {fingerprint(k)}" for k in known)
        raise ConfigurationError(
            f"host key for {settings.address} changed: the server presents {offered} but "
            f"{path} records {recorded}. This can mean someone is intercepting the connection; "
            "if the server's keys really were replaced, remove the old entry with "
            f"ssh-keygen -R '{settings.address}' -f {path} and connect again",
            setting=setting("known_hosts_path"), endpoint="sftp",
        )
    if settings.host_key_policy != ACCEPT_NEW:
        raise ConfigurationError(
            f"host key for {settings.address} is not known: the server presents {offered}, "
            f"which is not in {path}. Add it after checking the fingerprint "
            f"(ssh-keyscan -p {settings.port} {settings.host} >> {path}), or set "
            f"{setting('host_key_policy')}: accept-new to record a host's key on first "
            "connection",
            setting=setting("host_key_policy"), endpoint="sftp",
        )
    with _recording:
        if any(key.asbytes() == presented for key in load_known_keys(settings)):
            return "known"  # recorded by another worker meanwhile
        _record(settings, server_key)
    log.warning("recorded the host key of %s (%s) in %s on first connection",
                settings.address, offered, path)
    return "recorded"


def _record(settings: SftpSettings, key: paramiko.PKey) -> None:
    """Append the key like ``StrictHostKeyChecking=accept-new``: the file is created 0600."""
    path: Path = settings.known_hosts_path
    line = f"{settings.address} {key.get_name()} {key.get_base64()}\n".encode("ascii")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size > 0 and not _ends_with_newline(path):
                line = b"\n" + line
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        # Accepting a key that cannot be recorded would accept any key next time.
        raise cannot_record(settings, exc) from exc


def cannot_record(settings: SftpSettings, exc: OSError | str) -> ConfigurationError:
    """The error for a host key that ``accept-new`` could not record."""
    if isinstance(exc, OSError):
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
    else:
        reason = exc
    return ConfigurationError(
        f"cannot record the host key of {settings.address} in {settings.known_hosts_path}: "
        f"{reason}", setting=setting("known_hosts_path"), endpoint="sftp")


def prepare_file(settings: SftpSettings) -> None:
    """Create the known_hosts file (mode 0600) and its directory (0700) if missing, as
    :func:`_record` would: OpenSSH's client creates neither the directory nor a private file
    when it records a key."""
    path: Path = settings.known_hosts_path
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    except OSError as exc:
        raise cannot_record(settings, exc) from exc


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"
