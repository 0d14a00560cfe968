"""Running the uploader in a child process, optionally under a sampling profiler."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .child import RESULT_PREFIX
from .env import ROOT


class ChildFailed(RuntimeError):
    pass


def child_command(spec_path: Path) -> list[str]:
    return [sys.executable, "-m", "bench.child", str(spec_path)]


def run_child(spec: dict[str, Any], workdir: Path, name: str, *,
              timeout: float = 1800, profile_to: Path | None = None) -> dict[str, Any]:
    """Run ``bench.child`` on ``spec``; its result dict (raises :class:`ChildFailed`).

    The child's stderr (the uploader's log) is kept in ``workdir/<name>.log``. With
    ``profile_to`` the child runs under py-spy and its folded stacks are written there.
    """
    spec_path = workdir / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = workdir / f"{name}.log"
    command = child_command(spec_path)
    if profile_to is not None:
        command = profiler_command(profile_to) + command
    with open(log_path, "w") as log:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True,
                                timeout=timeout, cwd=ROOT, check=False)
    return parse_result(result.stdout, result.returncode, log_path)


def parse_result(stdout: str, returncode: int | None, log_path: Path) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            data: dict[str, Any] = json.loads(line[len(RESULT_PREFIX):])
            data["log"] = str(log_path)
            data["cipher"] = cipher_from_log(log_path)
            return data
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    raise ChildFailed(f"the uploader child exited with {returncode} without a result:\n{tail}")


def cipher_from_log(log_path: Path) -> str | None:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    marker = ", cipher "
    for line in text.splitlines():
        if "connected to SFTP server" in line and marker in line:
            return line.rsplit(marker, 1)[1].rstrip(")")
    return None


def log_problems(log_path: str | Path, limit: int = 5) -> list[str]:
    """WARNING and ERROR lines of a child's log: a measurement with retries is suspect."""
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return []
    bad = [line for line in lines if " WARNING " in line or " ERROR " in line]
    return bad[:limit]


# --- profiling


def py_spy() -> str | None:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    return found


def profiler_command(output: Path, *, native: bool = False, idle: bool = True) -> list[str]:
    exe = py_spy()
    if exe is None:
        raise ChildFailed("py-spy is not installed: pip install -e '.[bench]'")
    command = [exe, "record", "--rate", "200", "--format", "raw", "--threads",
               "--output", str(output)]
    if native:
        command.append("--native")
    if idle:
        command.append("--idle")
    return [*command, "--"]


_OWN_CODE = ("uploader_core/", "uploader_plugins/")


def summarize_folded(path: Path, top: int = 15) -> str:
    """What dominates a py-spy folded-stack file, thread by thread: self and inclusive time.

    Percentages are of all samples of the file, so threads can be compared.
    """
    by_thread: dict[str, Counter[str]] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = "?"
        if frames[0].startswith("thread ("):
            # --threads puts "thread (<tid>): <name>" first
            thread = frames[0].partition(": ")[2] or frames[0]
            frames = frames[1:]
        by_thread.setdefault(thread, Counter())[";".join(frames)] += int(count)
    total = sum(sum(c.values()) for c in by_thread.values()) or 1
    out = [f"{total} samples from {path.name}", "", "by thread:"]
    ranked = sorted(by_thread.items(), key=lambda item: -sum(item[1].values()))
    out += [f"  {100 * sum(c.values()) / total:5.1f}%  {name}" for name, c in ranked]
    for name, stacks in ranked[:3]:
        self_time: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        ours: Counter[str] = Counter()
        for stack, samples in stacks.items():
            frames = stack.split(";")
            if not frames or not frames[0]:
                continue
            self_time[_short(frames[-1])] += samples
            for frame in {_short(f, line=False) for f in frames}:
                inclusive[frame] += samples
            # The deepest line of the project's own code, and what it ended up in.
            own = [f for f in frames if any(p in f for p in _OWN_CODE)]
            if own:
                ours[f"{_short(own[-1])}  ->  {_short(frames[-1])}"] += samples
        out += ["", f"== {name}: deepest project line -> leaf frame"]
        out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in ours.most_common(top)]
        out += ["", f"== {name}: self time"]
        out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in self_time.most_common(top)]
        out += ["", f"== {name}: inclusive time"]
        out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top * 2)]
    return "\n".join(out) + "\n"


def _short(frame: str, *, line: bool = True) -> str:
    # "function (path/to/module.py:123)" -> "function (package/module.py:123)"
    name, _, where = frame.partition(" (")
    if not where:
        return frame
    location = where.rstrip(")")
    file, _, number = location.rpartition(":")
    if not file:
        file, number = location, ""
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else file
    return f"{name} ({short}:{number})" if number and line else f"{name} ({short})"
