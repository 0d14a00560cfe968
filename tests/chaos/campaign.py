"""The chaos campaign: events and malformed packages written over time while faults strike.

A real engine (``uploader run -c CONFIG`` in its own process) uploads to a real PostgreSQL and
a real OpenSSH sshd, each reached through a :class:`uploader_chaos.FaultProxy`. While the
campaign writes the seeded workload into the pending directory, it injects the seeded faults
(see :mod:`chaos.faults`). When both are done it lifts every fault, waits (bounded) for the
queue to drain, stops the engine with SIGTERM and audits everything (see :mod:`chaos.report`).

The same seed gives the same packages (ids, kinds, sizes, bytes, write times) and the same
faults (kinds, order, gaps, durations, cut offsets); how they interleave with the engine's own
work depends on the machine's timing, which is the point of running many seeds.

    PYTHONPATH=tests python -m chaos --events 1000 --seed 42     # or: scripts/chaos ...
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import yaml
from servers import PostgresServer, SftpServer

from uploader_chaos import FaultProxy
from uploader_core import DataUploader

from . import faults as faults_mod
from . import workload as workload_mod
from .engine import EngineProcess
from .faults import KINDS, Injector, RemoteDisk, Targets
from .report import Locations, Summary, audit

log = logging.getLogger("chaos")

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# The engine's settings: short everything, so that a campaign runs in minutes.
ENGINE_TIMEOUT = 2  # seconds: SFTP operations, database statements and connects
ORPHAN_TIMEOUT = 4.0
SETTLE = 0.5
STOP_LIMIT = 5.0  # SIGTERM must stop the engine within this long
STOP_TIMEOUT = 20.0  # after this long it is SIGKILLed (its stacks dumped first)


@dataclass
class Options:
    seed: int
    events: int = 60
    malformed: int | None = None  # default: every malformed kind once, or 10 % of events
    faults: int | None = None  # default: every fault kind once, or one per 6 s of window
    window: float | None = None  # seconds over which packages are written
    kinds: tuple[str, ...] = KINDS
    max_video: int = 8 * 1024 * 1024
    drain_timeout: float | None = None
    engine: str = "cli"
    workers: int = 1
    transport: str = "paramiko"
    keep: bool = False

    def resolved(self) -> Options:
        window = self.window if self.window is not None else max(30.0, self.events / 4)
        return Options(
            seed=self.seed, events=self.events,
            malformed=self.malformed if self.malformed is not None else max(
                len(workload_mod.MALFORMED), self.events // 10),
            faults=self.faults if self.faults is not None else max(
                len(self.kinds), round(window / 6)),
            window=window, kinds=self.kinds, max_video=self.max_video,
            drain_timeout=self.drain_timeout if self.drain_timeout is not None else (
                60.0 + self.events * 0.1),
            engine=self.engine, workers=self.workers, transport=self.transport,
            keep=self.keep)

    def command(self) -> str:
        parts = [f"--seed {self.seed}", f"--events {self.events}"]
        if self.malformed is not None:
            parts.append(f"--malformed {self.malformed}")
        if self.faults is not None:
            parts.append(f"--faults {self.faults}")
        if self.window is not None:
            parts.append(f"--window {self.window:g}")
        if self.kinds != KINDS:
            parts.append(f"--kinds {','.join(self.kinds)}")
        if self.engine != "cli":
            parts.append(f"--engine {self.engine}")
        if self.workers != 1:
            parts.append(f"--workers {self.workers}")
        if self.transport != "paramiko":
            parts.append(f"--transport {self.transport}")
        return "scripts/chaos " + " ".join(parts)


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while cleaning up, so that cleanup always finishes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT,
                                                                      signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _engine_config(site: Path, db: dict[str, Any], sftp: dict[str, Any], workers: int
                   ) -> dict[str, Any]:
    socket_path = site / "uploader.sock"
    if len(str(socket_path).encode()) > 90:  # sockaddr_un's limit, with room for a temp name
        socket_path = Path(tempfile.gettempdir()) / f"uploader-chaos-{os.getpid()}.sock"
    return {"uploader": {
        "pending_upload_dir": str(site / "pending"),
        "uploaded_dir": str(site / "uploaded"),
        "failed_dir": str(site / "failed"),
        "scan_interval_seconds": 0.2,
        "settle_seconds": SETTLE,
        "orphan_timeout_seconds": ORPHAN_TIMEOUT,
        "max_metadata_bytes": workload_mod.MAX_METADATA_BYTES,
        "log_level": "INFO",
        "workers": workers,
        "retry": {"initial_backoff_seconds": 0.2, "max_backoff_seconds": 2},
        "control": {"enabled": True, "socket_path": str(socket_path)},
        "database": {**db, "connect_timeout_seconds": ENGINE_TIMEOUT,
                     "statement_timeout_seconds": ENGINE_TIMEOUT},
        "sftp": {**sftp, "timeout_seconds": ENGINE_TIMEOUT},
    }}


class _Campaign:
    """One run; ``run()`` always cleans up what it made, whatever happens."""

    def __init__(self, options: Options, postgres: PostgresServer, sftp: SftpServer,
                 workdir: Path, out: Callable[[str], None]) -> None:
        self.o = options.resolved()
        self.requested = options
        self.postgres = postgres
        self.sftp = sftp
        self.workdir = workdir
        self.out = out
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.cleanups: list[tuple[str, Callable[[], None]]] = []

    def clock(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        self.out(f"[{self.clock():6.1f} s] {text}")

    def run(self) -> Summary:
        try:
            return self._run()
        finally:
            self.stop.set()
            with _shielded():
                self._cleanup()

    def _cleanup(self) -> None:
        for what, action in reversed(self.cleanups):
            try:
                action()
            except Exception as exc:
                self.out(f"cleanup: {what} failed: {exc}")
        self.cleanups.clear()

    def _run(self) -> Summary:
        o = self.o
        assert o.malformed is not None and o.faults is not None and o.window is not None
        assert o.drain_timeout is not None
        for path in faults_mod.sweep_stale_mounts():
            self.say(f"unmounted the tmpfs of a dead campaign at {path}")
        site = self.workdir / "site"
        for name in ("pending", "uploaded", "failed", "secrets"):
            (site / name).mkdir(parents=True, exist_ok=True)
        self._log_to(self.workdir / "campaign.log")

        # Servers: a database and a remote tree of our own.
        self.postgres.ensure_running()
        self.sftp.ensure_running()
        run_id = f"{os.getpid()}_{secrets.token_hex(3)}"
        db_name = f"chaos_{run_id}"
        pg = self.postgres.create_database(db_name)
        self.cleanups.append(("dropping the database", lambda: self._drop(db_name)))
        dirs = self.sftp.make_dirs(f"chaos-{run_id}")
        self.cleanups.append(("removing the remote tree",
                              lambda: shutil.rmtree(dirs.local_dir, ignore_errors=True)))

        # The packages are written over the whole time the faults take, so that every fault
        # meets traffic; the faults' plan does not depend on whether disk_full is available.
        fault_plan = faults_mod.plan(o.seed, o.faults, o.kinds, o.window)
        window = max(o.window, 0.95 * faults_mod.expected_duration(fault_plan))
        work = workload_mod.plan(o.seed, o.events, o.malformed, window, site / "pending",
                                 site / "secrets", o.max_video)
        disk_size = int(work.planned_remote_bytes() * 1.25) + (64 << 20)
        disk = RemoteDisk(dirs.local_dir, disk_size)
        disk.setup()
        self.cleanups.append(("unmounting the remote filesystem", disk.close))

        db_proxy = FaultProxy(pg.host, pg.port).start()
        self.cleanups.append(("closing the database proxy", db_proxy.close))
        sftp_proxy = FaultProxy(dirs.endpoint.host, dirs.endpoint.port).start()
        self.cleanups.append(("closing the SFTP proxy", sftp_proxy.close))

        sftp_section = {**dirs.config_section(), "port": sftp_proxy.port,
                        # The proxy's port is not the one known_hosts names.
                        "host_key_policy": "accept-new",
                        "known_hosts_path": str(site / "known_hosts"),
                        "transport": o.transport}
        config = _engine_config(site, {**pg.config_section(), "port": db_proxy.port},
                                sftp_section, o.workers)
        config_path = site / "uploader.yaml"
        config_path.write_text(yaml.safe_dump(config))
        with DataUploader(config) as setup_engine:
            setup_engine.init_storage()

        self.say(f"plan: {len(work.valid)} events ({_mib(sum(p.video_size for p in work.valid))}"
                 f" of video), {len(work.malformed)} malformed packages over {window:.0f} s; "
                 f"{len(fault_plan)} faults ({', '.join(sorted(set(f.kind for f in fault_plan)))})")
        self.say(f"full disk: {disk.method}")
        self.say(f"work directory {self.workdir}; engine log {site / 'engine.log'}")

        engine = EngineProcess(config_path, site / "engine.log", mode=o.engine)
        self.cleanups.append(("stopping the engine", engine.close))
        targets = Targets(engine=engine, postgres=self.postgres, sftp=self.sftp,
                          db_proxy=db_proxy, sftp_proxy=sftp_proxy, disk=disk,
                          remote_dirs=(dirs.local_video_dir, dirs.local_json_dir))
        self.cleanups.append(("bringing every server back", lambda: faults_mod.recover(targets)))
        engine.start()

        writer = workload_mod.Writer(work, self.stop)
        injector = Injector(fault_plan, targets, self.stop, self.clock)
        writer.start()
        injector.start()
        self.cleanups.append(("stopping the fault injector", lambda: _join(injector)))
        self.cleanups.append(("stopping the writer", lambda: _join(writer)))
        reported = 0

        def report_faults() -> None:
            nonlocal reported
            while reported < len(injector.done):
                record = injector.done[reported]
                reported += 1
                note = f" ({record.note})" if record.note else ""
                self.say(f"fault {record.fault.number}/{len(fault_plan)}: "
                         f"{record.fault.describe()}{note}")

        while not (writer.finished.is_set() and injector.finished.is_set()):
            engine.check()
            report_faults()
            time.sleep(0.1)
        report_faults()
        extra: list[str] = []
        for thread, what in ((writer, "writing the packages"), (injector, "injecting faults")):
            if thread.error is not None:
                extra.append(f"the campaign itself failed {what}: {thread.error!r}")

        # Every fault is lifted (the injector's last act): wait for the queue to drain.
        self.say("every fault is over and every package written; waiting for the queue to "
                 "drain")
        drain_started = time.monotonic()
        drain_seconds: float | None = None
        while True:
            engine.check()
            if not _queued(site / "pending"):
                drain_seconds = time.monotonic() - drain_started
                break
            if time.monotonic() - drain_started > o.drain_timeout:
                break
            time.sleep(0.25)
        if drain_seconds is None:
            left = _queued(site / "pending")
            extra.append(f"the queue did not drain within {o.drain_timeout:.0f} s: "
                         f"{len(left)} entries left in pending, e.g. {left[:5]} (the engine's "
                         "thread stacks are at the end of its log)")
            engine.dump_stacks()
        else:
            self.say(f"drained in {drain_seconds:.1f} s")
        if not engine.wait_started(30.0):
            extra.append("the engine did not log 'uploader started' within 30 s of its last "
                         "start")
        stop_seconds = engine.stop(timeout=STOP_TIMEOUT, slow=STOP_LIMIT)
        if stop_seconds is None:
            extra.append(f"the engine did not stop within {STOP_TIMEOUT:.0f} s of SIGTERM (its "
                         "thread stacks are at the end of its log)")
        elif stop_seconds > STOP_LIMIT:
            extra.append(f"the engine took {stop_seconds:.1f} s to stop on SIGTERM (more than "
                         f"{STOP_LIMIT:.0f} s)")
        extra += engine.unexpected_exits

        self.say("auditing")
        result = audit(work.packages, Locations(
            pending=site / "pending", uploaded=site / "uploaded", failed=site / "failed",
            secrets=site / "secrets", remote_video_dir=dirs.local_video_dir,
            remote_json_dir=dirs.local_json_dir, remote_video_name=dirs.remote_video_dir,
            remote_json_name=dirs.remote_json_dir), pg.conninfo(), site / "engine.log")
        by_kind: dict[str, tuple[int, int]] = {}
        for record in injector.done:
            injected, effective = by_kind.get(record.fault.kind, (0, 0))
            by_kind[record.fault.kind] = (injected + 1, effective + int(record.fired))
        missing = [k for k in o.kinds if k not in by_kind]
        notes = [f"fault kinds never injected: {', '.join(missing)}"] if missing else []
        summary = Summary(
            seed=o.seed, command=self.requested.command(), events=len(work.valid),
            malformed=len(work.malformed), faults={k: by_kind[k] for k in KINDS if k in by_kind},
            fault_notes=notes, audit=result, drain_seconds=drain_seconds,
            stop_seconds=stop_seconds, wall_seconds=self.clock(), disk_method=disk.method,
            engine_starts=engine.starts, extra_failures=extra)
        if not summary.passed:
            self._keep_evidence(pg.conninfo(), site, summary)
        return summary

    def _keep_evidence(self, conninfo: str, site: Path, summary: Summary) -> None:
        (self.workdir / "summary.txt").write_text(summary.table() + "\n")
        with contextlib.suppress(Exception), psycopg.connect(conninfo) as conn:
            rows = conn.execute("SELECT event_id, status, attempts, remote_video_path, "
                                "video_sha256, updated_at FROM events ORDER BY event_id")
            with open(self.workdir / "rows.tsv", "w", encoding="utf-8") as out:
                for row in rows:
                    out.write("\t".join(str(v) for v in row) + "\n")
        self.o.keep = True

    def _drop(self, name: str) -> None:
        self.postgres.ensure_running()
        self.postgres.drop_database(name)

    def _log_to(self, path: Path) -> None:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        loggers = [logging.getLogger(n) for n in ("chaos", "uploader_chaos")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.addHandler(handler)
            lg.setLevel(logging.INFO)

        def detach() -> None:
            for lg, level in zip(loggers, levels, strict=True):
                lg.removeHandler(handler)
                lg.setLevel(level)
            handler.close()
        self.cleanups.append(("closing the campaign log", detach))


def _queued(pending: Path) -> list[str]:
    """What is left to do: every entry but hidden ones (the engine's lock file, for one)."""
    return sorted(name for name in os.listdir(pending) if not name.startswith("."))


def _join(thread: threading.Thread) -> None:
    thread.join(60)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def run_campaign(options: Options, postgres: PostgresServer, sftp: SftpServer, workdir: Path,
                 out: Callable[[str], None] = print) -> Summary:
    """Run one campaign against these servers; ``workdir`` holds the device's directories.

    Every server is running again when this returns or raises, and everything the campaign
    made on them (its database, its remote tree, its tmpfs) is gone.
    """
    out(f"chaos campaign: seed {options.seed} (reproduce with: {options.command()})")
    return _Campaign(options, postgres, sftp, workdir, out).run()


# --- the command line


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown fault kinds {unknown}; choose from "
                                         f"{', '.join(KINDS)}")
    return kinds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/chaos",
        description="Run the uploader against real PostgreSQL and sshd servers while "
                    "injecting faults, then check that nothing was lost or duplicated.",
        epilog=f"fault kinds: {', '.join(KINDS)}. Exit status: 0 every invariant holds, "
               "1 an invariant is broken, 2 usage or set-up error, 130 interrupted.")
    parser.add_argument("--seed", type=int, help="random seed (default: a new one, printed)")
    parser.add_argument("--events", type=int, default=60, help="valid events (default 60)")
    parser.add_argument("--malformed", type=int,
                        help=f"malformed packages (default: max({len(workload_mod.MALFORMED)}, "
                             "events/10): every kind at least once)")
    parser.add_argument("--faults", type=int,
                        help="faults to inject (default: max(kinds, window/6): every kind at "
                             "least once)")
    parser.add_argument("--window", type=float,
                        help="seconds over which packages are written (default max(30, "
                             "events/4))")
    parser.add_argument("--kinds", type=_kinds, default=KINDS,
                        help="comma-separated fault kinds to use (default: all)")
    parser.add_argument("--max-video-mb", type=float, default=8.0,
                        help="largest video in MiB (default 8)")
    parser.add_argument("--drain-timeout", type=float,
                        help="seconds the queue may take to drain once the faults stop "
                             "(default 60 + events/10)")
    parser.add_argument("--engine", choices=("cli", "driver"), default="cli",
                        help="run the engine as 'uploader run -c' (default) or through "
                             "tests/integration/engine_driver.py --loop")
    parser.add_argument("--workers", type=int, default=1,
                        help="the engine's uploader.workers (default 1)")
    parser.add_argument("--transport", choices=("paramiko", "openssh"), default="paramiko",
                        help="the engine's sftp.transport (default paramiko)")
    parser.add_argument("--workdir", type=Path,
                        help="where the device's directories go (default: a new temporary "
                             "directory, removed unless the campaign fails or --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    if args.events < 0 or (args.malformed is not None and args.malformed < 0):
        print("chaos: --events and --malformed must not be negative", file=sys.stderr)
        return EXIT_USAGE
    if args.workers < 1:
        print("chaos: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    options = Options(seed=seed, events=args.events, malformed=args.malformed,
                      faults=args.faults, window=args.window, kinds=args.kinds,
                      max_video=max(1, int(args.max_video_mb * 2**20)),
                      drain_timeout=args.drain_timeout, engine=args.engine,
                      workers=args.workers, transport=args.transport, keep=args.keep)
    print(f"chaos campaign: seed {seed}", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)

    from servers import system
    from servers.pool import ServerPool

    def no_fixtures(name: str) -> Any:
        raise RuntimeError("the campaign runs the local server provider only")

    if args.workdir is not None:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="uploader-chaos-", dir=system.workspace_parent()))
    pool = ServerPool("local", no_fixtures)
    summary: Summary | None = None
    try:
        print("starting PostgreSQL and sshd ...", flush=True)
        postgres, sftp = pool.postgres(), pool.sftp()
        summary = run_campaign(options, postgres, sftp, workdir,
                               out=lambda text: print(text, flush=True))
    except KeyboardInterrupt:
        print("\nchaos: interrupted; everything was cleaned up", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        print(f"chaos: the campaign could not run: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        raise
    finally:
        with _shielded():
            pool.close()
            keep = args.keep or (summary is not None and not summary.passed)
            if keep:
                print(f"kept the work directory {workdir}", flush=True)
            elif args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    print(summary.table(), flush=True)
    return EXIT_PASS if summary.passed else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
