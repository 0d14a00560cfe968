"""The uploader as a process of its own, so its CPU time and peak memory can be measured.

``python -m bench.child SPEC.json`` builds a ``DataUploader`` from the spec's configuration,
runs passes until the pending directory is empty (or the spec says otherwise), and prints one
line ``BENCH-RESULT {json}``: wall time from building the engine to closing it, CPU seconds of
the process (every thread) over the same span, peak RSS, and what the monitor reported.

Spec keys: ``config`` (the configuration dict), ``max_passes``, ``pause_after_first`` (stop
taking jobs once the first is recorded completed, on its way to the archive: the backlog row;
a job whose transfer is under way then still finishes), ``time_scan`` (time one more
``scanner.scan`` afterwards), ``snapshots`` (time ``monitor.snapshot()`` that many times
afterwards), ``control_socket`` (a path: also time the control socket's snapshot),
``wait_for_go`` (print ``ready`` and wait for a line on stdin: the fleet row),
``tracemalloc`` (keep the Python heap at its largest and report its top N allocation sites).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

RESULT_PREFIX = "BENCH-RESULT "
LIMITED_PENDING = 200  # a screenful and more


def _cpu() -> float:
    """This process's CPU seconds and its children's: with ``sftp.transport: openssh`` the
    SSH clients it ran (each waited for when its connection closed, at the latest when the
    engine closes)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def machine_busy_seconds() -> float:
    """CPU seconds that all of the machine's cores have spent busy since boot (``/proc/stat``):
    what a run costs the whole machine, servers included; 0 where there is no such file."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(x) for x in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    # user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _maxrss_bytes(pid: int | str = "self") -> int:
    """The peak RSS of a process (this one by default) since it was executed (``VmHWM``).

    Not ``getrusage().ru_maxrss``: Linux carries that over from before ``execve``, so a
    child started by a large parent would report the parent's size.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 if pid == "self" else 0


def _children_maxrss_bytes() -> dict[str, int]:
    """The peak RSS of each child process still running (the ``ssh`` clients of
    ``transport: openssh``), by pid and command name."""
    found: dict[str, int] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        if int(stat[stat.rindex(")") + 2:].split()[1]) == me:
            found[f"{entry.name} {comm}"] = _maxrss_bytes(entry.name)
    return found


def _current_rss_bytes() -> int:
    try:
        fields = Path("/proc/self/statm").read_text().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def run(spec: dict[str, Any]) -> dict[str, Any]:
    from uploader_core import DataUploader, cpu, logs
    from uploader_core.monitor import EventKind

    config = spec["config"]
    logs.setup(str(config["uploader"].get("log_level", "INFO")))
    out: dict[str, Any] = {"rss_after_imports": _current_rss_bytes()}
    if spec.get("wait_for_go"):
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("no go")

    tracer = _MemoryTracer(int(spec["tracemalloc"])) if spec.get("tracemalloc") else None
    marks: dict[str, float] = {}
    lock = threading.Lock()
    completed = 0
    started_wall = time.time()
    cpu0 = _cpu()
    machine0 = machine_busy_seconds()
    t0 = time.perf_counter()
    engine = DataUploader(config)
    # As `uploader run` does: the service's threads on one CPU unless configured otherwise.
    cpu.apply(engine.settings["cpu_affinity"])
    marks["constructed"] = time.perf_counter() - t0
    out["rss_after_construct"] = _current_rss_bytes()

    # Time spent in each phase, summed over jobs: where a job's wall time goes.
    phase_seconds: dict[str, float] = {}
    current: dict[str, tuple[str, float]] = {}

    def close_phase(event_id: str | None, now: float) -> None:
        if event_id in current:
            phase, since = current.pop(event_id)
            phase_seconds[phase] = phase_seconds.get(phase, 0.0) + now - since

    def on_event(event: Any) -> None:
        nonlocal completed
        now = time.perf_counter() - t0
        pause = False
        with lock:
            if event.kind in (EventKind.PHASE, EventKind.COMPLETED, EventKind.RETRY,
                              EventKind.QUARANTINED):
                close_phase(event.event_id, now)
            if event.kind is EventKind.PHASE:
                marks.setdefault("first_phase", now)
                phase = str(event.data.get("phase"))
                current[event.event_id] = (phase, now)
                if phase == "archive" and "first_archiving" not in marks:
                    marks["first_archiving"] = now
                    pause = True
            elif event.kind is EventKind.COMPLETED:
                completed += 1
                if "first_completed" not in marks:
                    marks["first_completed"] = now
                    out["rss_at_first_completed"] = _current_rss_bytes()
        # Outside the lock: pause() publishes an event of its own, to this very callback.
        if pause and spec.get("pause_after_first"):
            engine.pause()

    engine.monitor.subscribe(on_event)
    outcomes: dict[str, int] = {}
    passes = 0
    max_passes = int(spec.get("max_passes", 20))
    try:
        while passes < max_passes:
            passes += 1
            if passes == 1:
                marks["pass_started"] = time.perf_counter() - t0
            results = engine.run_once()
            for r in results:
                outcomes[r.outcome.value] = outcomes.get(r.outcome.value, 0) + 1
            if spec.get("pause_after_first") or not _pending(engine.pending_dir):
                break
            if not any(r.outcome.value == "completed" for r in results):
                time.sleep(0.05)  # waiting on a retry: do not spin
        marks["passes_done"] = time.perf_counter() - t0
        if spec.get("time_scan"):
            from uploader_core.scanner import scan

            started = time.perf_counter()
            found = len(scan(engine.pending_dir))
            out["scan"] = {"seconds": time.perf_counter() - started, "candidates": found}
        if spec.get("snapshots"):
            out["snapshot"] = _time_snapshots(engine, int(spec["snapshots"]))
        if spec.get("control_socket"):
            out["control"] = _time_control(engine, Path(spec["control_socket"]),
                                           int(spec.get("snapshots") or 3))
        # Before close(), which ends them.
        out["children_maxrss"] = _children_maxrss_bytes()
    finally:
        engine.close()
    wall = time.perf_counter() - t0
    if tracer is not None:
        out["tracemalloc"] = tracer.stop()
    out.update({
        "wall": wall,
        "cpu": _cpu() - cpu0,
        "machine_cpu": machine_busy_seconds() - machine0,
        "started_wall": started_wall,
        "finished_wall": time.time(),
        "maxrss": _maxrss_bytes(),
        "completed": completed,
        "outcomes": outcomes,
        "passes": passes,
        "marks": marks,
        "phase_seconds": phase_seconds,
        "connections_made": getattr(engine.plugin("sftp"), "connections_made", None),
        # The CPUs the engine's threads ran on (uploader.cpu_affinity).
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    })
    return out


class _MemoryTracer:
    """tracemalloc, with the heap at its largest kept: which lines hold the memory.

    A thread looks at the traced size every 0.2 s and takes a snapshot whenever it is larger
    than at any earlier look. Slow; for profiling runs only.
    """

    def __init__(self, top: int) -> None:
        import tracemalloc

        self._tm = tracemalloc
        self._top = top
        tracemalloc.start(6)
        self._largest = 0
        self._snapshot: Any = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.2):
            self._look()

    def _look(self) -> None:
        current, _ = self._tm.get_traced_memory()
        if current > self._largest * 1.2:
            self._largest = current
            self._snapshot = self._tm.take_snapshot()

    def stop(self) -> dict[str, Any]:
        self._done.set()
        self._thread.join()
        self._look()
        _, peak = self._tm.get_traced_memory()
        snapshot = self._snapshot
        self._tm.stop()
        out: dict[str, Any] = {"peak": peak, "largest_seen": self._largest, "top": []}
        if snapshot is not None:
            stats = snapshot.statistics("traceback")[: self._top]
            for stat in stats:
                newest_first = list(stat.traceback)[::-1][:6]
                frames = [f"{Path(f.filename).name}:{f.lineno}" for f in newest_first]
                out["top"].append({"bytes": stat.size, "count": stat.count,
                                   "where": " <- ".join(frames)})
        return out


def _pending(directory: Path) -> bool:
    with os.scandir(directory) as entries:
        return any(e.name.endswith(".json") and not e.name.startswith(".") for e in entries)


def _time_snapshots(engine: Any, repeats: int) -> dict[str, Any]:
    times = []
    size = listed = 0
    for _ in range(repeats):
        started = time.perf_counter()
        snap = engine.monitor.snapshot()
        times.append(time.perf_counter() - started)
        size = int(snap.get("pending_count", 0))
        listed = len(snap.get("pending", ()))
    return {"median": statistics.median(times), "max": max(times), "pending_count": size,
            "listed": listed}


def _time_control(engine: Any, path: Path, repeats: int) -> dict[str, Any]:
    try:
        from uploader_core.control import ControlServer
        from uploader_core.control_client import ControlConnection
    except ImportError as exc:
        return {"available": False, "reason": f"control socket not importable: {exc}"}
    server = ControlServer(engine, path)
    server.start()
    try:
        times = []
        size = 0
        limited = []
        with ControlConnection(path, timeout=60) as connection:
            for _ in range(repeats):
                # As the TUI asks for it: the default snapshot (the oldest 10,000 pending).
                started = time.perf_counter()
                snap = connection.request("snapshot")
                times.append(time.perf_counter() - started)
                size = len(json.dumps(snap))
            for _ in range(repeats):
                started = time.perf_counter()
                connection.request("snapshot", pending_limit=LIMITED_PENDING)
                limited.append(time.perf_counter() - started)
        return {"available": True, "median": statistics.median(times), "max": max(times),
                "reply_bytes": size, "limited_median": statistics.median(limited)}
    finally:
        server.close()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    result = run(spec)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
