"""One engine per pending directory; a lock left by a killed engine never blocks a start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from engine_rig import Rig

from uploader_core.queue_lock import QueueBusy, QueueLock


def test_second_engine_on_the_same_queue_is_refused_naming_the_first(
    make_rig: Callable[..., Rig]
) -> None:
    first, second = make_rig(), make_rig()
    first.engine.run_once()
    with pytest.raises(QueueBusy) as info:
        second.engine.run_once()
    message = str(info.value)
    assert f"pid {os.getpid()}" in message
    assert str(first.pending) in message
    first.engine.close()
    second.engine.run_once()  # free once the first has closed
    second.engine.close()


def test_lock_of_a_killed_engine_does_not_block_the_next(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, pathlib, time; from uploader_core.queue_lock import QueueLock; "
         "QueueLock(pathlib.Path(sys.argv[1])).acquire(); print('locked', flush=True); "
         "time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(QueueBusy, match=f"pid {holder.pid}"):
        QueueLock(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    lock = QueueLock(tmp_path)
    lock.acquire()
    assert lock.held
    lock.release()
