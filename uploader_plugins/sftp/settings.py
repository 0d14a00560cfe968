"""The ``uploader.sftp`` section: its schema, its validated form, and the private key.

Everything that can be checked without the network is checked here, when the engine is built,
so that a typo in a cipher name or an unreadable key stops the engine at start-up with the
setting named instead of failing every job later. The key's passphrase is used once, to load
the key, and is never kept, logged or put into a message.
"""

from __future__ import annotations

import logging
import posixpath
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from paramiko.pkey import UnknownKeyType

from uploader_core.config import Field, Section, resolve_secret
from uploader_core.errors import ConfigurationError

log = logging.getLogger(__name__)

SECTION = "sftp"
PREFIX = f"uploader.{SECTION}"

STRICT = "strict"
ACCEPT_NEW = "accept-new"

PARAMIKO = "paramiko"
OPENSSH = "openssh"

# AES-GCM first: it needs no separate MAC pass, and it is what makes paramiko about as fast as
# OpenSSH's own client on CPUs with AES instructions. CTR follows for servers without GCM.
# Configurable because some edge CPUs have no AES instructions.
DEFAULT_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)


def setting(key: str) -> str:
    """The full path of one key of this section, as messages name it."""
    return f"{PREFIX}.{key}"


def config_sections() -> dict[str, Section]:
    """The schema of ``uploader.sftp``; a fresh mapping each call (its defaults are mutable)."""
    return {
        SECTION: {
            "host": Field(str, help="SFTP server: host name or IP address"),
            "port": Field(int, 22, "SFTP server port", minimum=1, maximum=65535),
            "username": Field(str, help="account on the SFTP server"),
            "ssh_key_path": Field(str, help="private key used to authenticate (key auth only)"),
            "ssh_key_passphrase": Field(str, None, "passphrase of the private key, if any"),
            "ssh_key_passphrase_env": Field(str, None,
                                            "environment variable holding the passphrase"),
            "ssh_key_passphrase_file": Field(str, None, "file holding the passphrase"),
            "remote_video_dir": Field(str, help="absolute remote directory for the videos"),
            "remote_json_dir": Field(str, help="absolute remote directory for the JSON documents"),
            "known_hosts_path": Field(str, "~/.ssh/known_hosts",
                                      "OpenSSH known_hosts file the server's key is checked "
                                      "against"),
            "host_key_policy": Field(str, STRICT,
                                     "strict: refuse unknown hosts; accept-new: record the key "
                                     "of a host seen for the first time (a changed key is "
                                     "always refused)",
                                     choices=(STRICT, ACCEPT_NEW)),
            "timeout_seconds": Field(float, 30.0,
                                     "longest wait for the server in any one network operation",
                                     minimum=0.1),
            "ciphers": Field(list, list(DEFAULT_CIPHERS),
                             "SSH ciphers in order of preference"),
            "transport": Field(str, PARAMIKO,
                               "paramiko: SSH in this process; openssh: OpenSSH's own client "
                               "(ssh) carries the SFTP session, so encryption runs in C in a "
                               "process of its own (less CPU; keys without a passphrase)",
                               choices=(PARAMIKO, OPENSSH)),
            "bandwidth_limit_kbps": Field(
                float, None,
                "upload rate cap in kilobits per second (1 kbps = 1000 bit/s, so 8000 is "
                "1 MB/s) of file data; 0 or null: no cap. A reload applies a new cap at once, "
                "to the transfer under way too",
                minimum=0),
        }
    }


def supported_ciphers() -> tuple[str, ...]:
    """The cipher names this paramiko can negotiate, in its own order of preference."""
    # Not part of paramiko's typed API, but the very tuple its ``ciphers`` setter validates
    # against; reading it lets configuration fail early instead of at the first connection.
    names: Sequence[str] = getattr(paramiko.Transport, "_preferred_ciphers", ())
    return tuple(names)


def ssh_client() -> str:
    """The path of OpenSSH's client, for ``transport: openssh``."""
    path = shutil.which("ssh")
    if path is None:
        raise ConfigurationError(
            f"{setting('transport')}: openssh needs OpenSSH's client (ssh) on PATH; install "
            "it (Debian: openssh-client) or use paramiko",
            setting=setting("transport"))
    return path


def openssh_ciphers() -> tuple[str, ...]:
    """The cipher names the installed OpenSSH client knows (``ssh -Q cipher``)."""
    try:
        listed = subprocess.run([ssh_client(), "-Q", "cipher"], capture_output=True, text=True,
                                timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigurationError(f"{setting('transport')}: cannot ask ssh for its ciphers: "
                                 f"{exc}", setting=setting("transport")) from exc
    return tuple(listed.split())


@dataclass(frozen=True)
class SftpSettings:
    """The validated ``uploader.sftp`` section, with paths expanded."""

    host: str
    port: int
    username: str
    key_path: Path
    remote_video_dir: str
    remote_json_dir: str
    known_hosts_path: Path
    host_key_policy: str
    timeout: float
    ciphers: tuple[str, ...]
    bandwidth_limit_kbps: float = 0.0
    transport: str = PARAMIKO

    @property
    def bandwidth_bytes_per_second(self) -> float:
        """The cap in bytes per second; 0 means none."""
        return self.bandwidth_limit_kbps * 1000 / 8

    @property
    def connection_settings(self) -> tuple[object, ...]:
        """Everything a connection is made with: when any of it changes, reconnect."""
        return (self.host, self.port, self.username, self.key_path, self.known_hosts_path,
                self.host_key_policy, self.timeout, self.ciphers, self.transport)

    @property
    def address(self) -> str:
        """How OpenSSH names this server, in messages and in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SftpSettings:
        """Read the validated ``uploader`` section; raise ConfigurationError naming a setting."""
        section = config.get(SECTION)
        if not isinstance(section, Mapping):
            raise ConfigurationError(f"{PREFIX}: the section is missing", setting=PREFIX)
        return cls(
            host=str(section["host"]),
            port=int(section["port"]),
            username=str(section["username"]),
            key_path=Path(str(section["ssh_key_path"])).expanduser(),
            remote_video_dir=_remote_dir(section["remote_video_dir"], "remote_video_dir"),
            remote_json_dir=_remote_dir(section["remote_json_dir"], "remote_json_dir"),
            known_hosts_path=Path(str(section["known_hosts_path"])).expanduser(),
            host_key_policy=str(section["host_key_policy"]),
            timeout=float(section["timeout_seconds"]),
            ciphers=_ciphers(section["ciphers"], str(section.get("transport") or PARAMIKO)),
            bandwidth_limit_kbps=float(section.get("bandwidth_limit_kbps") or 0),
            transport=str(section.get("transport") or PARAMIKO),
        )


def _remote_dir(value: Any, key: str) -> str:
    text = str(value)
    if not text.startswith("/"):
        raise ConfigurationError(
            f"{setting(key)}: must be an absolute path on the server (as the SFTP account "
            f"sees it, inside its chroot if it has one), got {text!r}",
            setting=setting(key),
        )
    return posixpath.normpath(text).replace("//", "/")


def _ciphers(value: Any, transport: str) -> tuple[str, ...]:
    names = tuple(str(name) for name in (value or ()))
    supported = openssh_ciphers() if transport == OPENSSH else supported_ciphers()
    if not names:
        raise ConfigurationError(
            f"{setting('ciphers')}: must name at least one cipher; supported: "
            f"{', '.join(supported)}",
            setting=setting("ciphers"),
        )
    unknown = [name for name in names if name not in supported]
    if unknown:
        raise ConfigurationError(
            f"{setting('ciphers')}: not supported: {', '.join(unknown)}; supported: "
            f"{', '.join(supported)}",
            setting=setting("ciphers"),
        )
    if len(set(names)) != len(names):
        raise ConfigurationError(f"{setting('ciphers')}: lists a cipher twice",
                                 setting=setting("ciphers"))
    return names


def load_private_key(config: Mapping[str, Any], key_path: Path) -> paramiko.PKey:
    """Load the private key now, so that a bad key stops the engine at start-up.

    The passphrase may be given inline, through an environment variable or through a file
    (:func:`uploader_core.config.resolve_secret`). No message says anything about it but
    whether one was given.
    """
    section = config[SECTION]
    passphrase = resolve_secret(section, "ssh_key_passphrase", PREFIX)
    where = setting("ssh_key_path")
    password = passphrase.encode("utf-8") if passphrase is not None else None
    try:
        try:
            # paramiko hands the password to cryptography, which wants bytes; the stubs say str.
            return paramiko.PKey.from_path(key_path, password)  # type: ignore[arg-type]
        except TypeError:
            # cryptography raises TypeError both for "encrypted but no passphrase" and for
            # "passphrase given but the key is not encrypted"; OpenSSH ignores a needless
            # passphrase, so do the same.
            if password is None:
                raise
            key = paramiko.PKey.from_path(key_path, None)
            log.warning("%s: a passphrase is configured but the key %s is not encrypted",
                        PREFIX, key_path)
            return key
    except OSError as exc:
        raise unreadable_key(key_path, exc) from exc
    except (TypeError, paramiko.PasswordRequiredException) as exc:
        raise ConfigurationError(
            f"private key {key_path} is encrypted: set {setting('ssh_key_passphrase')} "
            "(or _env / _file)",
            setting=where,
        ) from exc
    except UnknownKeyType as exc:
        raise ConfigurationError(f"private key {key_path} is of a type paramiko cannot use",
                                 setting=where) from exc
    except (ValueError, paramiko.SSHException) as exc:
        if password is not None:
            reason = "is not a usable private key, or the passphrase is wrong"
        else:
            reason = "is not a usable private key (OpenSSH or PEM format expected)"
        raise ConfigurationError(f"private key {key_path} {reason}", setting=where) from exc


def unreadable_key(key_path: Path, exc: OSError) -> ConfigurationError:
    """The error for a private key file that cannot be opened."""
    if isinstance(exc, FileNotFoundError):
        return ConfigurationError(f"private key {key_path} does not exist",
                                  setting=setting("ssh_key_path"))
    return ConfigurationError(f"cannot read private key {key_path}: {exc.strerror}",
                              setting=setting("ssh_key_path"))
