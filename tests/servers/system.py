"""Operating-system plumbing for the local servers: ports, process trees, accounts, scratch dirs."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKSPACE_PREFIX = "uploader-test-"
_OWNER_FILE = "owner.pid"
_PIDS_DIR = "pids"


def is_root() -> bool:
    return os.geteuid() == 0


def free_port() -> int:
    """A loopback port nobody listens on right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def run_checked(args: list[str], **kwargs: Any) -> None:
    """Run a setup command; on failure raise with its output, which says what went wrong."""
    result = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed with status {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )


class WaitTimeout(RuntimeError):
    """A server did not reach the expected state in time."""


def wait_port_closed(port: int) -> None:
    wait_until(lambda: not port_accepts(port), f"port {port} to close", timeout=10)


def ssh_greets(port: int, host: str = "127.0.0.1") -> bool:
    """True once an SSH server answers with its banner (a docker proxy accepts much earlier)."""
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            greeting = sock.recv(256)
            # Answer in kind before hanging up, or sshd logs a reset connection as an error.
            sock.sendall(b"SSH-2.0-readiness-probe\r\n")
            sock.shutdown(socket.SHUT_WR)
            return greeting.startswith(b"SSH-")
    except OSError:
        return False


def wait_until(
    condition: Callable[[], bool],
    what: str,
    timeout: float = 30.0,
    details: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``condition`` every 20 ms; raise with ``details()`` (a log tail) on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}\n{details()}")
        time.sleep(0.02)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return f"--- last lines of {path} ---\n" + "\n".join(text.splitlines()[-lines:])


# --- process trees ---------------------------------------------------------------------------


def _parent_map() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stat:
                # The command name may contain spaces and parentheses: split after the last ')'.
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, found through /proc.

    sshd puts every connection in a session of its own (setsid), so process groups do not
    reach the session processes; parentage does.
    """
    children: dict[int, list[int]] = {}
    for child, parent in _parent_map().items():
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def signal_tree(pid: int, sig: int) -> None:
    for member in process_tree(pid):
        _signal(member, sig)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants.

    The tree is frozen with SIGSTOP first, repeating until the scan finds nothing new, so that
    no process can fork a child between the scan and the kill and leave it running.
    """
    frozen: set[int] = set()
    while True:
        new = [member for member in process_tree(pid) if member not in frozen]
        if not new:
            break
        for member in new:
            _signal(member, signal.SIGSTOP)
        frozen.update(new)
    for member in frozen:
        _signal(member, signal.SIGKILL)
    # SIGKILL takes effect asynchronously; callers rely on the sockets and the shared memory
    # of these processes being gone when we return.
    wait_until(lambda: not any(_exists(member) for member in frozen), "killed processes to exit")


def _exists(pid: int) -> bool:
    """True while ``pid`` is a process that has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def reap_or_kill(pids: list[int], timeout: float = 10.0) -> None:
    """Wait for already-signalled processes to exit; SIGKILL whatever outlives ``timeout``."""
    try:
        wait_until(lambda: not any(_exists(pid) for pid in pids), "processes to exit", timeout)
    except WaitTimeout:
        for pid in pids:
            _signal(pid, signal.SIGKILL)


def stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float = 30.0) -> None:
    """Send ``sig`` and reap; SIGKILL the whole tree if it does not exit within ``timeout``."""
    if proc.poll() is None:
        _signal(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait(timeout)


# --- accounts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> Account | None:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)

    @classmethod
    def current(cls) -> Account:
        entry = pwd.getpwuid(os.geteuid())
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)

    def popen_kwargs(self) -> dict[str, Any]:
        """Popen arguments that run the child as this account (when we are root)."""
        if not is_root() or self.uid == 0:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if is_root():
            os.chown(path, self.uid, self.gid)


def ensure_system_user(name: str) -> Account:
    """The account ``name``, created as a no-login system user when missing."""
    account = Account.lookup(name)
    if account is None:
        useradd = ["useradd", "--system", "--user-group", "--no-create-home"]
        useradd += ["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name]
        created = subprocess.run(useradd, check=False, capture_output=True, text=True)
        # A concurrent session may have created it first; either way it must exist now.
        account = Account.lookup(name)
        if account is None:
            raise RuntimeError(f"could not create the system user {name!r}: {created.stderr}")
    _unlock(name)
    return account


def _unlock(name: str) -> None:
    """Without PAM, sshd refuses accounts whose password field starts with '!' (useradd's
    default: "locked"); '*' means "no password" and leaves key logins possible."""
    try:
        with open("/etc/shadow", encoding="utf-8") as shadow:
            locked = any(line.startswith(f"{name}:!") for line in shadow)
    except OSError:
        return
    if locked:
        run_checked(["usermod", "-p", "*", name])


def chown_tree(path: Path, account: Account) -> None:
    if not is_root():
        return
    account.chown(path)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), account.uid, account.gid, follow_symlinks=False)


# --- scratch directories ---------------------------------------------------------------------


def _root_owned_chain(path: Path) -> bool:
    """True when every component is root-owned and not group/world-writable (ChrootDirectory)."""
    for component in [path, *path.parents]:
        info = component.stat()
        if info.st_uid != 0 or info.st_mode & 0o022:
            return False
    return True


def _traversable_chain(path: Path) -> bool:
    """True when any account can reach ``path`` (the servers run as other users than us)."""
    return all(component.stat().st_mode & 0o001 for component in [path, *path.parents])


def workspace_parent(*, for_chroot: bool = False) -> Path:
    """Where to create workspaces.

    sshd's ChrootDirectory needs a root-owned path without group/world-writable components, so
    /tmp (mode 1777) will not do for a chroot; /run or /var/lib will.
    """
    if for_chroot:
        candidates = [Path("/run"), Path("/var/lib"), Path("/srv")]
        for candidate in candidates:
            if candidate.is_dir() and _root_owned_chain(candidate):
                return candidate
        raise RuntimeError(f"no root-owned writable directory for a chroot among {candidates}")
    override = os.environ.get("UPLOADER_TEST_WORKDIR")
    if override:
        return Path(override)
    if _roomy_tmpfs(Path("/dev/shm")):
        # Creating files is where the servers spend their time (CREATE DATABASE copies ~300
        # files): 10 ms on tmpfs against 250 ms on some virtual disks.
        return Path("/dev/shm")
    default = Path(tempfile.gettempdir())
    return default if _traversable_chain(default) else Path("/tmp")


def _roomy_tmpfs(path: Path, minimum: int = 1 << 30) -> bool:
    """A world-usable tmpfs with room for the tests' uploads (containers often give 64 MB)."""
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            is_tmpfs = any(
                line.split()[1:3] == [str(path), "tmpfs"] for line in mounts if line.strip()
            )
        usage = os.statvfs(path)
    except OSError:
        return False
    free = usage.f_bavail * usage.f_frsize
    return is_tmpfs and free >= minimum and _traversable_chain(path) and os.access(path, os.W_OK)


def make_workspace(tag: str, *, for_chroot: bool = False) -> Path:
    """A new root-owned 0755 scratch directory, marked with our pid for stale-run cleanup."""
    parent = workspace_parent(for_chroot=for_chroot)
    path = Path(tempfile.mkdtemp(prefix=f"{WORKSPACE_PREFIX}{tag}-", dir=parent))
    path.chmod(0o755)
    (path / _OWNER_FILE).write_text(str(os.getpid()))
    (path / _PIDS_DIR).mkdir()
    return path


def record_pid(workspace: Path, name: str, pid: int | None) -> None:
    """Remember (or forget, with None) a server pid so a later run can clean up after a crash."""
    pid_file = workspace / _PIDS_DIR / name
    if pid is None:
        pid_file.unlink(missing_ok=True)
    else:
        pid_file.write_text(str(pid))


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _executable_name(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


def _stale_workspaces() -> Iterator[Path]:
    for parent in {workspace_parent(), *_chroot_parents()}:
        for path in parent.glob(f"{WORKSPACE_PREFIX}*"):
            try:
                if path.stat().st_uid != os.geteuid():
                    continue  # another account's run: not ours to judge
                owner = int((path / _OWNER_FILE).read_text())
            except (OSError, ValueError):
                continue
            if not alive(owner):
                yield path


def _chroot_parents() -> list[Path]:
    try:
        return [workspace_parent(for_chroot=True)]
    except RuntimeError:
        return []


def sweep_stale_workspaces() -> None:
    """Kill servers and remove workspaces left by test runs that died without cleaning up."""
    for path in _stale_workspaces():
        for pid_file in (path / _PIDS_DIR).glob("*"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text())
                # Check the executable, so a recycled pid never kills an unrelated process.
                if _executable_name(pid) in {"postgres", "sshd", "pgbouncer"}:
                    kill_tree(pid)
        shutil.rmtree(path, ignore_errors=True)


def remove_workspace(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
