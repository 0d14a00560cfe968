"""The engine as a long-running service: one per queue, signals, reload."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
from conftest import Site

pytestmark = pytest.mark.integration


def wait_for(predicate: Any, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_second_uploader_on_the_same_queue_exits_at_once_naming_the_first(site: Site) -> None:
    config = site.write_config()
    first = subprocess.Popen([sys.executable, "-m", "uploader_core.cli", "run", "-c",
                              str(config)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (site.pending / ".uploader.lock").exists()
                 and (site.pending / ".uploader.lock").stat().st_size > 0, what="the lock")
        started = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "uploader_core.cli", "run", "-c",
                                 str(config)], capture_output=True, text=True, timeout=30)
        assert time.monotonic() - started < 10
        assert second.returncode == 2
        assert f"pid {first.pid}" in second.stderr
        assert "already processing" in second.stderr
    finally:
        first.terminate()
        _, err = first.communicate(timeout=30)
    assert first.returncode == 0, err
