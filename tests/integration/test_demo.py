"""``uploader demo --headless`` end to end: throwaway servers, real plugins, an outage, and
nothing left behind."""

from __future__ import annotations

import glob
import importlib.machinery
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uploader_core.control_client import request

pytestmark = pytest.mark.integration

UPLOADER = str(Path(sys.executable).parent / "uploader")


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_headless_demo_uploads_survives_an_outage_and_cleans_up() -> None:
    started = time.monotonic()
    result = subprocess.run([UPLOADER, "demo", "--headless", "--seconds", "15"],
                            capture_output=True, text=True, timeout=90, check=False,
                            stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.search(r"(\d+) events generated, (\d+) completed, (\d+) retried, "
                        r"(\d+) quarantined, (\d+) SFTP outages", result.stdout)
    assert summary, result.stdout
    generated, completed, retried, _quarantined, outages = map(int, summary.groups())
    assert generated >= 5
    assert completed >= 3
    assert outages == 1 and retried >= 1  # the outage was seen, and recovered from
    workdir = re.search(r"workdir (\S+)", result.stdout)
    assert workdir, result.stdout
    assert not Path(workdir.group(1)).exists()
    assert processes_mentioning(workdir.group(1)) == []  # PostgreSQL is gone too
    assert elapsed < 40


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupting_the_demo_still_cleans_up(sig: signal.Signals) -> None:
    demo = subprocess.Popen([UPLOADER, "demo", "--headless"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert demo.stderr is not None
        deadline = time.monotonic() + 60
        socket = None
        while socket is None:  # the demo says where to attach once everything runs
            assert time.monotonic() < deadline and demo.poll() is None
            line = demo.stderr.readline()
            found = re.search(r"uploader tui --socket (\S+)", line)
            socket = Path(found.group(1)) if found else None
        while request(socket, "snapshot")["totals"]["completed"] == 0:
            assert time.monotonic() < deadline, "nothing was uploaded"
            time.sleep(0.1)  # polling with a deadline
        demo.send_signal(sig)
        out, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 0, err
    assert "events generated" in out
    assert not socket.parent.exists()
    assert processes_mentioning(str(socket.parent)) == []


def test_without_system_postgresql_the_demo_uses_pgservers_binaries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from uploader_demo import postgres

    bundled = tmp_path / "pgserver" / "pginstall" / "bin"
    bundled.mkdir(parents=True)
    (bundled / "initdb").touch()
    spec = importlib.machinery.ModuleSpec("pgserver", None,
                                          origin=str(tmp_path / "pgserver" / "__init__.py"))
    # The postgres module calls glob.glob, shutil.which and importlib.util.find_spec through
    # the modules, so patching the modules reaches it.
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: spec if name == "pgserver" else None)
    assert postgres.find_bindir() == bundled
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(postgres.DemoSetupError, match=r"edge-uploader\[demo\]"):
        postgres.find_bindir()
