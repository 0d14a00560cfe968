"""``uploader.cpu_affinity``: the service's threads on one CPU, chosen from those it may use.

The confining runs in a child interpreter: it changes the whole process it runs in.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from uploader_core import cpu

ROOT = Path(__file__).resolve().parents[2]

several_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs a process allowed on two CPUs or more")


WHERE_AM_I = r"""
import json, os
from uploader_core import cpu

seen = {}
for n in sorted(os.sched_getaffinity(0)):
    os.sched_setaffinity(0, {n})
    seen[n] = cpu.current_cpu()
print(json.dumps(seen))
"""


@several_cpus
def test_the_cpu_a_thread_runs_on_is_read_from_the_kernel() -> None:
    done = subprocess.run([sys.executable, "-c", WHERE_AM_I], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    seen = json.loads(done.stdout)
    assert len(seen) >= 2
    assert all(int(n) == where for n, where in seen.items()), seen


def _confined(setting: str) -> dict[str, Any]:
    """What the CPUs of a child interpreter's threads were, and became, with ``setting``."""
    done = subprocess.run([sys.executable, "-c", CONFINE.replace("SETTING", repr(setting))],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


CONFINE = r"""
import json, os, subprocess, sys, threading
from uploader_core import cpu

before = sorted(os.sched_getaffinity(0))
started, finish = threading.Event(), threading.Event()
def wait():
    started.set()
    finish.wait()
early = threading.Thread(target=wait)
early.start()
started.wait()

# Where the thread runs when it applies (read from the kernel: the test above), made the
# last CPU so that the choice differs from simply the first.
cpu.current_cpu = lambda: before[-1]
cpu.apply(SETTING)

seen = {}
late = threading.Thread(target=lambda: seen.update(late=sorted(os.sched_getaffinity(0))))
late.start()
late.join()
child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                       capture_output=True, text=True, check=True).stdout
threads = {tid: sorted(os.sched_getaffinity(int(tid))) for tid in os.listdir("/proc/self/task")}
finish.set()
early.join()
print(json.dumps({"before": before, "early": threads[str(early.native_id)],
                  "threads": threads, "late": seen["late"], "child": json.loads(child)}))
"""


@several_cpus
def test_every_thread_and_what_they_start_later_share_one_cpu() -> None:
    seen = _confined("one")
    [chosen] = seen["early"]
    # The CPU the applying thread was running on (not simply the first), so that engines
    # started together spread out.
    assert chosen == seen["before"][-1]
    # The threads running when it was applied, those started later, and their children.
    assert all(cpus == [chosen] for cpus in seen["threads"].values()), seen
    assert seen["late"] == [chosen]
    assert seen["child"] == [chosen]


@several_cpus
def test_inherited_leaves_the_threads_on_the_cpus_they_were_given() -> None:
    seen = _confined("inherited")
    before = seen["before"]
    assert len(before) >= 2
    assert all(cpus == before for cpus in seen["threads"].values()), seen
    assert seen["late"] == before and seen["child"] == before


@several_cpus
def test_a_refusal_is_a_warning_and_the_threads_stay_where_they_were(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    before = os.sched_getaffinity(0)

    def refuse(pid: int, cpus: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    with caplog.at_level(logging.WARNING, logger="uploader_core.cpu"):
        cpu.apply("one")
    assert "cannot keep the engine's threads on one CPU (Operation not permitted)" in caplog.text
    assert os.sched_getaffinity(0) == before
