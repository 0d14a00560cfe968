"""Keeping the service's threads on one CPU (``uploader.cpu_affinity``).

Why: the interpreter runs one thread at a time, and an upload hands it from thread to thread
thousands of times a second: the transfer thread, the SSH transport's reader, the thread that
talks to the database, the archiver. When the thread that takes it over waits on another
CPU, each hand-over wakes that CPU (an inter-processor interrupt; on a virtual machine, an
exit to the hypervisor) and moves the lock between caches. On one CPU a hand-over is an
ordinary context switch. What is given up is the overlap of one thread's hashing and system
calls with another thread's Python code on a second CPU, which measured less than the
hand-overs cost (bench row 2 on a 2-CPU virtual machine: 500 events in 2.2 s instead of
2.9 s, with 22% less CPU; with 4 workers 2.0 s instead of 3.3 s). The other CPUs stay free
for the analyzer and, on a test bench, for the servers.

Which CPU: the one the process is running on when the setting is applied, of those it may
run on (systemd's ``CPUAffinity=`` or a container's cpuset decide that). The kernel put it
there knowing how busy each CPU is, so a CPU the analyzer keeps busy is not chosen while
another is free, and engines started together (several queues on one device, a fleet
simulated on one machine) are spread over the CPUs.

Processes the service starts inherit its CPU. The ``ssh`` client of ``sftp.transport:
openssh`` hands every byte to and from the engine through a socket, and measured faster beside
it than on a CPU of its own (500 events in 2.3 s against 2.5 s; a 1 GiB video at 540 against
480 MB/s).
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import suppress
from pathlib import Path

log = logging.getLogger(__name__)

ONE = "one"
INHERITED = "inherited"
CHOICES = (ONE, INHERITED)


def current_cpu() -> int | None:
    """The CPU the calling thread is running on; None if the kernel does not say."""
    try:
        stat = Path("/proc/thread-self/stat").read_text()
        # Field 39, "processor"; counted after the command name, which may hold spaces.
        return int(stat.rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return None


def _threads() -> set[int]:
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:
        return {threading.get_native_id()}


def confine_to_one_cpu() -> tuple[int, set[int]] | None:
    """Put every thread of this process, and so every thread and process they start, on one
    CPU of those it may run on.

    Returns the CPU and those it could have run on; None where there is nothing to choose
    (one CPU allowed) or no way to set affinities. Raises :class:`OSError` if the kernel
    refuses.
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        return None
    here = current_cpu()
    cpu = here if here in allowed else min(allowed)
    done: set[int] = set()
    # A thread started while a round ran may have been started by one not yet moved.
    for _ in range(3):
        todo = _threads() - done
        if not todo:
            break
        for tid in todo:
            with suppress(ProcessLookupError):  # the thread ended meanwhile
                os.sched_setaffinity(tid, {cpu})
        done |= todo
    return cpu, allowed


def apply(setting: str) -> None:
    """Apply ``uploader.cpu_affinity`` to this process; say what it runs on."""
    if setting != ONE:
        return
    try:
        confined = confine_to_one_cpu()
    except OSError as exc:
        log.warning("cannot keep the engine's threads on one CPU (%s); they run on any CPU "
                    "they may use", exc.strerror or exc)
        return
    if confined is not None:
        cpu, allowed = confined
        log.info("engine threads on CPU %d of %s", cpu, ",".join(map(str, sorted(allowed))))
