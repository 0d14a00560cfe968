"""The shipped unit file, and logs that read well in journald."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[2] / "systemd" / "uploader.service"


def unit_settings() -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_unit_is_a_notify_service_with_watchdog_reload_and_hardening() -> None:
    settings = unit_settings()
    assert settings["Type"] == "notify"
    assert int(settings["WatchdogSec"]) > 0
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["User"] == "uploader"
    for option in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "ProtectHome",
                   "RestrictAddressFamilies", "SystemCallFilter", "CapabilityBoundingSet"):
        assert option in settings, option


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify wants the ExecStart binary to exist; point it at one that does.
    unit = tmp_path / "uploader.service"
    unit.write_text(UNIT.read_text().replace(
        "/opt/edge-uploader/.venv/bin/uploader", sys.executable))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if "uploader.service" in line] == []


def test_logs_carry_syslog_priorities_under_journald(tmp_path: Path) -> None:
    log_file = tmp_path / "stderr"
    code = ("import logging, os, sys; st = os.fstat(2); "
            "os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'; "
            "from uploader_core import logs; logs.setup('INFO'); "
            "logging.getLogger('uploader').warning('disk nearly full'); "
            "logging.getLogger('uploader').info('uploaded')")
    with open(log_file, "w") as err:
        subprocess.run([sys.executable, "-c", code], stderr=err, check=True)
    assert log_file.read_text().splitlines() == [
        "<4>uploader: disk nearly full", "<6>uploader: uploaded"]


def test_logs_have_timestamps_in_a_terminal(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import logging; from uploader_core import logs; "
         "logs.setup('INFO'); logging.getLogger('uploader').info('hello')"],
        capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                             if k != "JOURNAL_STREAM"})
    line = done.stderr.strip()
    assert line.endswith("INFO    uploader: hello")
    assert line[:4].isdigit() and "T" in line[:11]
