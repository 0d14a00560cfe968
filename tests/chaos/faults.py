"""The faults of the campaign: a seeded plan, and the thread that injects them one by one.

Kinds:

``engine_kill``       SIGKILL of the engine, then a restart after a short pause. The moment is
                      random, or while an upload is in flight, or just after a JSON reached
                      its final name on the server (before the record is completed and the
                      files are archived: the window where a crash must not cost a
                      duplicate).
``postgres_restart``  a clean PostgreSQL restart (fast shutdown: sessions are terminated).
``postgres_kill``     SIGKILL of the postmaster and every backend; down for a while, then
                      started again (crash recovery).
``sshd_restart``      a clean sshd restart (every session ends).
``sshd_kill``         SIGKILL of sshd and every session; down for a while, then started.
``db_cut``            the database link is reset after a random number of bytes (in a random
                      direction) through the fault proxy.
``sftp_cut``          the same on the SFTP link, at a random offset of up to a few MB.
``db_stall``          the database link goes silent (no data, no FIN, no RST) for longer than
                      the engine's timeouts.
``sftp_stall``        the same on the SFTP link.
``disk_full``         the server's filesystem fills up (a ballast file takes every free byte),
                      then is freed.

Faults run one after the other with a random gap before each. Every fault is undone in a
``finally`` block: when the campaign stops, for whatever reason, every server runs again,
every proxy passes, and the ballast is gone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers import PostgresServer, SftpServer, system

from uploader_chaos import FaultProxy

from .engine import EngineProcess

log = logging.getLogger("chaos")

KINDS = ("engine_kill", "postgres_restart", "postgres_kill", "sshd_restart", "sshd_kill",
         "db_cut", "sftp_cut", "db_stall", "sftp_stall", "disk_full")

# How long a fault lasts (seconds), by kind: servers stay down, links stay silent, the disk
# stays full. Stalls outlast the engine's 2 s timeouts by design.
_HOLD = {
    "engine_kill": (0.0, 1.5),
    "postgres_restart": (0.0, 0.0),
    "postgres_kill": (0.5, 4.0),
    "sshd_restart": (0.0, 0.0),
    "sshd_kill": (0.5, 4.0),
    "db_cut": (3.0, 8.0),  # how long an armed cut waits for traffic before it is disarmed
    "sftp_cut": (3.0, 8.0),
    "db_stall": (3.0, 7.0),
    "sftp_stall": (3.0, 7.0),
    "disk_full": (2.0, 6.0),
}
_DIRECTIONS = ("upstream", "downstream", "both")
_MOMENTS = ("random", "transfer", "uploaded")
# Time a fault takes beyond its hold: a server's restart, an engine's start-up.
_OVERHEAD = {"engine_kill": 0.5, "postgres_restart": 1.0, "postgres_kill": 1.0,
             "sshd_restart": 0.5, "sshd_kill": 0.5}


def _expected(kind: str, hold: float) -> float:
    """About how long a fault takes: an armed cut usually fires long before its hold ends."""
    return (hold / 3 if kind.endswith("_cut") else hold) + _OVERHEAD.get(kind, 0.0)


@dataclass(frozen=True)
class Fault:
    """One planned fault."""

    number: int
    kind: str
    gap: float  # seconds to wait before injecting it
    hold: float
    offset: int = 0  # cuts: bytes forwarded before the reset
    direction: str = "upstream"
    moment: str = "random"  # engine_kill: "random", "transfer" (an upload in flight) or
    # "uploaded" (just after a JSON reached its final remote name: before the record is
    # completed or the files archived)

    def describe(self) -> str:
        if self.kind.endswith("_cut"):
            return f"{self.kind} after {self.offset} B {self.direction}"
        if self.kind == "engine_kill":
            when = {"random": "at a random moment", "transfer": "during a transfer",
                    "uploaded": "just after an upload"}[self.moment]
            return f"engine_kill {when}, restart after {self.hold:.1f} s"
        if self.hold:
            return f"{self.kind} for {self.hold:.1f} s"
        return self.kind


def plan(seed: int, count: int, kinds: tuple[str, ...], window: float) -> list[Fault]:
    """``count`` faults over about ``window`` seconds; every kind at least once if it fits."""
    rng = random.Random(f"faults:{seed}")
    order = list(kinds)
    rng.shuffle(order)
    while len(order) < count:
        order.append(rng.choice(kinds))
    order = order[:count]
    holds = [rng.uniform(*_HOLD[kind]) for kind in order]
    # Spread the gaps so that the faults cover the window the events are written in.
    spare = max(0.0, window - sum(_expected(k, h) for k, h in zip(order, holds, strict=True)))
    mean_gap = max(0.5, spare / max(1, len(order)))
    faults = []
    for number, (kind, hold) in enumerate(zip(order, holds, strict=True), start=1):
        offset, direction = 0, "upstream"
        if kind == "db_cut":
            offset, direction = rng.randint(0, 1500), rng.choice(_DIRECTIONS)
        elif kind == "sftp_cut":
            direction = rng.choice(_DIRECTIONS)
            if direction == "downstream":  # an upload sends little back: acknowledgements
                offset = rng.randint(0, 16 * 1024)
            elif rng.random() < 0.5:
                offset = rng.randint(0, 256 * 1024)
            else:
                offset = rng.randint(0, 2 * 1024 * 1024)
        faults.append(Fault(number=number, kind=kind, gap=rng.uniform(0.3, 2 * mean_gap),
                            hold=hold, offset=offset, direction=direction,
                            moment=rng.choice(_MOMENTS) if kind == "engine_kill" else "random"))
    return faults


def expected_duration(faults: list[Fault]) -> float:
    """About how long the injector takes to run ``faults`` (cuts may end sooner)."""
    return sum(f.gap + _expected(f.kind, f.hold) for f in faults)


# --- the server's filesystem


_MOUNT_SOURCE = "uploader-chaos"
_STALE_MOUNT = re.compile(rf"{_MOUNT_SOURCE}-(\d+)")
BALLAST_NAME = ".chaos-ballast"


def sweep_stale_mounts() -> list[str]:
    """Unmount the tmpfs of campaigns that died without cleaning up; the paths unmounted."""
    swept: list[str] = []
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            entries = [line.split() for line in mounts if line.strip()]
    except OSError:
        return swept
    for source, target, *_ in entries:
        match = _STALE_MOUNT.fullmatch(source)
        if match is None or system.alive(int(match.group(1))):
            continue
        target = target.replace("\\040", " ")
        result = subprocess.run(["umount", "-l", target], capture_output=True, check=False)
        if result.returncode == 0:
            swept.append(target)
    return swept


class RemoteDisk:
    """The filesystem under the campaign's remote directories, and a way to fill it.

    ``setup()`` mounts a tmpfs of ``size`` bytes over ``root`` (which needs root and a kernel
    that lets us mount) and recreates the ``videos`` and ``json`` directories in it. Without
    it, the remote tree stays where it is and the ballast goes on that filesystem, but only
    when it has at most ``ballast_limit`` bytes free (filling a big shared disk would hurt
    everything else on the machine); otherwise ``disk_full`` is not available and ``method``
    says why.
    """

    def __init__(self, root: Path, size: int, ballast_limit: int = 2 << 30) -> None:
        self.root = root
        self.size = size
        self.ballast_limit = ballast_limit
        self.mounted = False
        self.method = ""
        self.available = False
        self._ballast = root / BALLAST_NAME
        self._lock = threading.Lock()

    def setup(self) -> None:
        info = os.stat(self.root)
        children = {name: os.stat(self.root / name) for name in ("videos", "json")}
        options = f"size={self.size},mode=0755,uid={info.st_uid},gid={info.st_gid}"
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, f"{_MOUNT_SOURCE}-{os.getpid()}",
             str(self.root)], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            self.mounted = True
            try:
                for name, st in children.items():
                    (self.root / name).mkdir(mode=0o755)
                    os.chown(self.root / name, st.st_uid, st.st_gid)
            except BaseException:
                self.close()
                raise
            self.available = True
            self.method = f"tmpfs of {self.size / 2**20:.0f} MiB mounted on the remote tree"
            return
        why = (result.stderr or result.stdout).strip() or f"status {result.returncode}"
        free = self.free_bytes()
        if free <= self.ballast_limit:
            self.available = True
            self.method = (f"ballast file on the existing filesystem ({free / 2**20:.0f} MiB "
                           f"free; mount failed: {why})")
        else:
            self.method = (f"not available: mount failed ({why}) and the filesystem has "
                           f"{free / 2**30:.1f} GiB free, too much to fill safely")

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Take every free byte with the ballast file; the bytes it holds."""
        with self._lock:
            fd = os.open(self._ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                free = self.free_bytes()
                with contextlib.suppress(OSError):
                    if free > (1 << 20):
                        os.posix_fallocate(fd, os.fstat(fd).st_size, free - (1 << 20))
                # The rest, and the last partial pages, by ever smaller plain writes.
                for size in (1 << 16, 4096, 512, 1):
                    chunk = b"\0" * size
                    try:
                        while os.write(fd, chunk):
                            pass
                    except OSError as exc:
                        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                            raise
                return os.fstat(fd).st_size
            finally:
                os.close(fd)

    def release(self) -> None:
        with self._lock, contextlib.suppress(FileNotFoundError):
            os.unlink(self._ballast)

    def close(self) -> None:
        self.release()
        if not self.mounted:
            return
        for _ in range(50):
            result = subprocess.run(["umount", str(self.root)], capture_output=True,
                                    check=False)
            if result.returncode == 0:
                self.mounted = False
                return
            time.sleep(0.1)  # a server session may still hold a file open
        subprocess.run(["umount", "-l", str(self.root)], capture_output=True, check=False)
        self.mounted = False


# --- injection


@dataclass
class Injected:
    """What one fault did."""

    fault: Fault
    started: float  # seconds after the campaign's start
    ended: float = 0.0
    fired: bool = True  # False for a cut that met no traffic, a skipped fault
    note: str = ""


@dataclass
class Targets:
    """Everything a fault can hit."""

    engine: EngineProcess
    postgres: PostgresServer
    sftp: SftpServer
    db_proxy: FaultProxy
    sftp_proxy: FaultProxy
    disk: RemoteDisk
    remote_dirs: tuple[Path, ...]


class Injector(threading.Thread):
    """Runs the planned faults in order; ``stop_event`` ends it early (every fault is undone)."""

    def __init__(self, faults: list[Fault], targets: Targets, stop_event: threading.Event,
                 clock: Callable[[], float]) -> None:
        super().__init__(name="chaos-injector", daemon=True)
        self.faults = faults
        self.targets = targets
        self.stop_event = stop_event
        self.clock = clock
        self.done: list[Injected] = []
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            for fault in self.faults:
                if self.stop_event.wait(fault.gap):
                    break
                record = Injected(fault, started=self.clock())
                self.targets.engine.mark(f"fault {fault.number}: {fault.describe()}")
                log.info("fault %d: %s", fault.number, fault.describe())
                try:
                    self._inject(fault, record)
                finally:
                    record.ended = self.clock()
                    self.done.append(record)
                    self.targets.engine.mark(f"fault {fault.number} over"
                                             + (f" ({record.note})" if record.note else ""))
        except BaseException as exc:
            self.error = exc
            log.exception("fault injection failed")
        finally:
            recover(self.targets)
            self.finished.set()

    def _inject(self, fault: Fault, record: Injected) -> None:
        t = self.targets
        kind = fault.kind
        if kind == "engine_kill":
            if fault.moment == "transfer":
                record.note = ("killed during a transfer" if self._wait_for_transfer(5.0)
                               else "no transfer within 5 s; killed anyway")
            elif fault.moment == "uploaded":
                uploaded = self._wait_for_upload(5.0)
                record.note = (f"killed just after {uploaded} reached the server" if uploaded
                               else "no upload finished within 5 s; killed anyway")
            t.engine.kill()
            self.stop_event.wait(fault.hold)
            t.engine.start()
        elif kind == "postgres_restart":
            t.postgres.restart()
        elif kind == "sshd_restart":
            t.sftp.restart()
        elif kind in ("postgres_kill", "sshd_kill"):
            server: Any = t.postgres if kind == "postgres_kill" else t.sftp
            try:
                server.kill()
                self.stop_event.wait(fault.hold)
            finally:
                server.start()
        elif kind.endswith("_cut"):
            proxy = t.db_proxy if kind == "db_cut" else t.sftp_proxy
            before = proxy.cuts
            proxy.cut_after_bytes(fault.offset, fault.direction)
            deadline = time.monotonic() + fault.hold
            while proxy.cuts == before and time.monotonic() < deadline \
                    and not self.stop_event.is_set():
                time.sleep(0.01)
            proxy.pass_through()
            record.fired = proxy.cuts > before
            if not record.fired:
                record.note = f"no {fault.direction} traffic reached the offset in time"
        elif kind.endswith("_stall"):
            proxy = t.db_proxy if kind == "db_stall" else t.sftp_proxy
            try:
                proxy.stall()
                self.stop_event.wait(fault.hold)
            finally:
                proxy.pass_through()
        elif kind == "disk_full":
            if not t.disk.available:
                record.fired = False
                record.note = t.disk.method
                return
            try:
                held = t.disk.fill()
                record.note = f"ballast of {held / 2**20:.1f} MiB, " \
                              f"{t.disk.free_bytes()} B left free"
                self.stop_event.wait(fault.hold)
            finally:
                t.disk.release()
        else:  # pragma: no cover - plan() only makes the kinds above
            raise ValueError(f"unknown fault kind {kind!r}")

    def _wait_for_upload(self, timeout: float) -> str | None:
        """The name of the next JSON to reach its final name on the server, once it does."""
        directory = self.targets.remote_dirs[-1]
        try:
            before = set(os.listdir(directory))
        except OSError:
            return None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop_event.is_set():
            with contextlib.suppress(OSError):
                for name in os.listdir(directory):
                    if name not in before and not name.startswith("."):
                        return name
            time.sleep(0.002)
        return None

    def _wait_for_transfer(self, timeout: float) -> bool:
        """True once a temporary (partial) file is on the server, i.e. an upload is under way."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop_event.is_set():
            for directory in self.targets.remote_dirs:
                with contextlib.suppress(OSError), os.scandir(directory) as entries:
                    for entry in entries:
                        if entry.name.endswith(".part") and \
                                entry.stat(follow_symlinks=False).st_size > 0:
                            return True
            time.sleep(0.005)
        return False


def recover(t: Targets) -> None:
    """Undo every fault: proxies pass, ballast gone, servers and engine up. Never raises."""
    for action in (t.db_proxy.pass_through, t.sftp_proxy.pass_through, t.disk.release,
                   t.postgres.ensure_running, t.sftp.ensure_running):
        try:
            action()
        except Exception:
            log.exception("recovering from the faults: %s failed", action)
