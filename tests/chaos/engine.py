"""The engine under test: a real ``uploader run -c CONFIG`` in its own process.

The process is started through a small boot snippet that only adds two harness features to
the unchanged CLI: ``SIGUSR1`` prints every thread's stack into the engine's log (used when
the queue does not drain, to show where the engine is stuck), and the engine kills itself if
the campaign dies without cleaning up (it polls its parent; no engine outlives a campaign).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "integration" / "engine_driver.py"
MAX_RESTARTS = 10  # an engine that keeps exiting by itself is not restarted again

_BOOT = """\
import faulthandler, os, runpy, signal, sys, threading, time
faulthandler.register(signal.SIGUSR1, all_threads=True)
_parent = int(os.environ["CHAOS_PARENT_PID"])
def _orphan_watch():
    while True:
        time.sleep(0.5)
        if os.getppid() != _parent:
            os.kill(os.getpid(), signal.SIGKILL)
threading.Thread(target=_orphan_watch, name="chaos-orphan-watch", daemon=True).start()
mode, args = sys.argv[1], sys.argv[2:]
if mode == "driver":
    sys.path.insert(0, os.path.dirname(args[0]))
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")
else:
    from uploader_core.cli import main
    sys.argv = ["uploader", *args]
    sys.exit(main())
"""


class EngineProcess:
    """Start, SIGKILL, restart and stop the engine; every start appends to one log file.

    ``mode`` is ``"cli"`` (``uploader run -c CONFIG``, the default) or ``"driver"``
    (``tests/integration/engine_driver.py CONFIG --loop``).
    """

    def __init__(self, config: Path, log_path: Path, mode: str = "cli") -> None:
        if mode not in ("cli", "driver"):
            raise ValueError(f"engine mode must be 'cli' or 'driver', not {mode!r}")
        self.config = config
        self.log_path = log_path
        self.mode = mode
        self.starts = 0
        self.kills = 0
        self.unexpected_exits: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._lock = threading.RLock()
        self._start_offset = 0

    def _command(self) -> list[str]:
        if self.mode == "driver":
            return [sys.executable, "-c", _BOOT, "driver", str(DRIVER), str(self.config),
                    "--loop"]
        return [sys.executable, "-c", _BOOT, "cli", "run", "-c", str(self.config)]

    def mark(self, text: str) -> None:
        """A line in the engine's log, so that its lines can be matched with the faults."""
        with self._lock:
            log = self._open_log()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
            log.write(f"{stamp} ======= chaos: {text}\n".encode())
            log.flush()

    def _open_log(self) -> IO[bytes]:
        if self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open across restarts
        return self._log

    def start(self) -> None:
        with self._lock:
            if self.alive():
                return
            self.starts += 1
            self.mark(f"engine start #{self.starts}")
            log = self._open_log()
            self._start_offset = log.tell()
            env = {**os.environ, "CHAOS_PARENT_PID": str(os.getpid()),
                   "PYTHONUNBUFFERED": "1"}
            self._proc = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                cwd=self.config.parent,
                # Its own session: a Ctrl-C in the terminal reaches only the campaign, which
                # then stops the engine itself.
                start_new_session=True)

    def wait_started(self, timeout: float) -> bool:
        """Wait until the engine running now has logged that it started (its signal handlers
        are in place from then on: a SIGTERM earlier just ends the process)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                offset = self._start_offset
                alive = self.alive()
            if alive:
                with open(self.log_path, "rb") as log:
                    log.seek(offset)
                    if b"uploader started" in log.read():
                        return True
            time.sleep(0.1)
        return False

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a power cut does to the engine."""
        with self._lock:
            if self._proc is None:
                return
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGKILL)
                self.kills += 1
            self._proc.wait()
            self.mark(f"engine SIGKILLed (pid {self._proc.pid})")
            self._proc = None

    def check(self) -> None:
        """Notice an engine that exited on its own (a crash); it is started again."""
        with self._lock:
            if self._proc is None or self._proc.poll() is None:
                return
            code = self._proc.returncode
            self.unexpected_exits.append(f"the engine (pid {self._proc.pid}) exited on its "
                                         f"own with status {code}")
            self._proc = None
            if len(self.unexpected_exits) > MAX_RESTARTS:
                self.mark(f"engine exited by itself with status {code}; given up after "
                          f"{MAX_RESTARTS} such exits")
                return
            self.mark(f"engine exited by itself with status {code}; starting it again")
            self.start()

    def dump_stacks(self) -> None:
        with self._lock:
            if self.alive() and self._proc is not None:
                self.mark("SIGUSR1: stacks of every engine thread follow")
                self._proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)

    def stop(self, timeout: float = 20.0, slow: float = 5.0) -> float | None:
        """SIGTERM and wait; the seconds it took, or None if it had to be SIGKILLed.

        An engine still running after ``slow`` seconds has its thread stacks dumped into the
        log (SIGUSR1), which shows what holds it up.
        """
        with self._lock:
            if self._proc is None:
                return 0.0
            proc, self._proc = self._proc, None
            if proc.poll() is not None:
                return 0.0
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(slow)
            except subprocess.TimeoutExpired:
                self.mark(f"engine still running {slow:.0f} s after SIGTERM; SIGUSR1: the "
                          "stacks of every engine thread follow")
                proc.send_signal(signal.SIGUSR1)
            try:
                proc.wait(max(0.0, timeout - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                self.mark(f"engine ignored SIGTERM for {timeout:.0f} s; SIGKILL")
                proc.kill()
                proc.wait()
                return None
            took = time.monotonic() - started
            self.mark(f"engine stopped by SIGTERM after {took:.2f} s, status {proc.returncode}")
            if proc.returncode != 0:
                self.unexpected_exits.append(f"the engine exited with status {proc.returncode} "
                                             "on SIGTERM")
            return took

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
            if self._log is not None:
                self._log.close()
                self._log = None
