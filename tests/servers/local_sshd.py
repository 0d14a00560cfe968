"""A private OpenSSH sshd serving SFTP for one non-root account, on a free loopback port."""

from __future__ import annotations

import os
import posixpath
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

from . import system
from .endpoints import SftpDirs, SftpEndpoint
from .keys import known_hosts_line, make_ed25519_key
from .process import LocalProcess

SFTP_USER = "uploader-sftp"
SSHD = Path("/usr/sbin/sshd")
_DIR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")


def _openssh_version() -> tuple[int, int]:
    result = subprocess.run([str(SSHD), "-V"], capture_output=True, text=True, check=False)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", result.stdout + result.stderr)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def make_sftp_dirs(endpoint: SftpEndpoint, name: str, owner: system.Account) -> SftpDirs:
    """Create ``<remote_base>/<name>/{videos,json}`` on disk, owned by the SFTP account."""
    if not _DIR_NAME.fullmatch(name):
        raise ValueError(f"unsuitable directory name {name!r}")
    local = endpoint.root / name
    remote = posixpath.join(endpoint.remote_base, name)
    for path in (local, local / "videos", local / "json"):
        path.mkdir()
        owner.chown(path)
    return SftpDirs(
        endpoint=endpoint,
        remote_dir=remote,
        remote_video_dir=posixpath.join(remote, "videos"),
        remote_json_dir=posixpath.join(remote, "json"),
        local_dir=local,
        local_video_dir=local / "videos",
        local_json_dir=local / "json",
    )


class LocalSshd(LocalProcess):
    """sshd with its own host key and config under ``<workspace>/sshd``.

    Logins are as ``uploader-sftp`` (not root, which would bypass the permission checks tests
    rely on). With ``chroot=True`` the account is jailed the way hosted SFTP services do it:
    it sees ``/upload`` where the files are ``<workspace>/jail/upload`` on disk.
    """

    def __init__(self, workspace: Path, *, chroot: bool = False) -> None:
        if not SSHD.exists():
            raise RuntimeError(f"{SSHD} not found; run scripts/install-system-deps.sh as root")
        if chroot and not system.is_root():
            raise PermissionError("sshd can only chroot its users when it runs as root")
        self.name = "sshd-chroot" if chroot else "sshd"
        super().__init__(workspace, workspace / self.name / "sshd.log")
        self._chroot = chroot
        self._dir = workspace / self.name
        self._config = self._dir / "sshd_config"
        self.account = (
            system.ensure_system_user(SFTP_USER) if system.is_root() else system.Account.current()
        )
        self.port = system.free_port()
        if chroot:
            self._jail: Path | None = workspace / "jail"
            root, remote_base = self._jail / "upload", "/upload"
        else:
            self._jail = None
            root = workspace / "sftp"
            remote_base = str(root)
        self._endpoint = SftpEndpoint(
            host="127.0.0.1",
            port=self.port,
            username=self.account.name,
            key_path=self._dir / "client_key",
            known_hosts_path=self._dir / "known_hosts",
            root=root,
            remote_base=remote_base,
        )

    # --- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        self._dir.mkdir(mode=0o755)
        if self._jail is not None:
            # ChrootDirectory must be root-owned and not writable by anyone else.
            self._jail.mkdir(mode=0o755)
        self._endpoint.root.mkdir(mode=0o755)
        self.account.chown(self._endpoint.root)

        host_public = make_ed25519_key(self._dir / "host_key", "uploader-test-host")
        client_public = make_ed25519_key(self._endpoint.key_path, "uploader-test-client")
        (self._dir / "authorized_keys").write_text(client_public + "\n")
        self._endpoint.known_hosts_path.write_text(
            known_hosts_line(self._endpoint.host, self.port, host_public)
        )
        self._config.write_text(self._config_text())
        if system.is_root():
            # The privilege separation directory; a fresh install creates it only at boot.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.start()

    def _config_text(self) -> str:
        lines = [
            f"ListenAddress 127.0.0.1:{self.port}",
            f"HostKey {self._dir / 'host_key'}",
            f"PidFile {self._dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self._dir / 'authorized_keys'}",
            f"AllowUsers {self.account.name}",
            "AuthenticationMethods publickey",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PermitRootLogin no",
            # The files live under /tmp, whose mode (1777) StrictModes rejects.
            "StrictModes no",
            "UseDNS no",
            "DisableForwarding yes",
            "PermitTTY no",
            "LogLevel ERROR",
            # Fleet tests open 20+ connections at once; the defaults (10:30:100) drop some.
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            "Subsystem sftp internal-sftp",
            "ForceCommand internal-sftp",
        ]
        if _openssh_version() >= (9, 8):
            # Newer sshd penalises sources with failed logins; fault tests fail logins on purpose.
            lines.append("PerSourcePenalties no")
        if self._jail is not None:
            lines.append(f"ChrootDirectory {self._jail}")
        return "\n".join(lines) + "\n"

    # --- endpoints -----------------------------------------------------------------------

    @property
    def endpoint(self) -> SftpEndpoint:
        return self._endpoint

    def make_dirs(self, name: str) -> SftpDirs:
        return make_sftp_dirs(self._endpoint, name, self.account)

    # --- control -------------------------------------------------------------------------

    def _launch(self, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            # -D: stay in the foreground, so the process we hold is the listener.
            [str(SSHD), "-D", "-e", "-f", str(self._config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _ready(self) -> bool:
        return system.ssh_greets(self.port)

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the listener and every session process; established sessions end too."""
        sessions = system.process_tree(proc.pid)
        system.signal_tree(proc.pid, signal.SIGTERM)
        system.stop_process(proc, signal.SIGTERM)
        system.reap_or_kill(sessions)

