"""A video the engine's user cannot read (mode 000) is quarantined with the reason.

Root reads anything, so as root the engine runs in a child process without the capabilities
that override file permissions, as it would run under its own account in the field.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engine_rig import base_config

from uploader_core.testing import write_package

SCRIPT = """
import json, sys
from uploader_core import DataUploader
from uploader_core.testing import memory_plugins
_, _, plugins = memory_plugins()
engine = DataUploader(json.loads(sys.argv[1]), plugins=plugins, load_entry_points=False)
print(json.dumps({r.event_id: [r.outcome.value, r.reason] for r in engine.run_once()}))
"""


def test_unreadable_video_is_quarantined_and_its_bytes_kept(tmp_path: Path) -> None:
    config = base_config(tmp_path)
    pending = tmp_path / "pending"
    write_package(pending, "evt_locked", video=b"secret frames")
    write_package(pending, "evt_open")
    (pending / "evt_locked.mp4").chmod(0o000)
    command = [sys.executable, "-c", SCRIPT, json.dumps(config)]
    if os.geteuid() == 0:
        drop = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", *command]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results["evt_open"][0] == "completed"
    assert results["evt_locked"] == ["quarantined",
                                     "video evt_locked.mp4 is not readable (mode 0)"]
    moved = tmp_path / "failed" / "evt_locked.mp4"
    moved.chmod(0o600)
    assert moved.read_bytes() == b"secret frames"
