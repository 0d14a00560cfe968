"""``uploader status``, and ``uploader run`` serving the control socket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import yaml

from uploader_core import EndpointUnavailable, cli, status
from uploader_core.control import ControlServer
from uploader_core.testing import write_package

UPLOADER = str(Path(sys.executable).parent / "uploader")


@pytest.fixture
def served_rig(make_rig: Callable[..., Any], tmp_path: Path) -> Iterator[Any]:
    rig = make_rig()
    with ControlServer(rig.engine, tmp_path / "u.sock"):
        yield rig


def run_status(tmp_path: Path, *extra: str) -> int:
    return cli.main(["status", "--socket", str(tmp_path / "u.sock"), *extra])


def test_status_without_an_engine_says_how_to_start_one(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"uploader": {"pending_upload_dir": str(tmp_path / "p")}}))
    assert cli.main(["status", "-c", str(config)]) == status.EXIT_NOT_RUNNING
    err = capsys.readouterr().err
    assert "not running" in err
    assert str(tmp_path / "uploader.sock") in err
    assert f"uploader run -c {config}" in err


def test_status_of_a_healthy_engine(served_rig: Any, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    write_package(served_rig.pending, "evt_ok")
    write_package(served_rig.pending, "bad id")
    served_rig.engine.run_once()
    assert run_status(tmp_path) == status.EXIT_HEALTHY
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("engine    ")
    assert any(line.startswith("uploaded  ") and "evt_ok" in line for line in lines)
    assert any("bad id: " in line for line in lines)  # a failure, with its reason
    assert "UNHEALTHY" not in out


def test_status_exits_1_when_an_endpoint_is_down(served_rig: Any, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    write_package(served_rig.pending, "evt_wait")
    served_rig.remote.faults.fail_next(EndpointUnavailable("connection refused",
                                                           endpoint="sftp"))
    served_rig.engine.run_once()
    assert run_status(tmp_path) == status.EXIT_UNHEALTHY
    out = capsys.readouterr().out
    assert "sftp" in out and "DOWN" in out
    assert "UNHEALTHY: sftp is down: connection refused" in out
    assert "pending   1, oldest" in out


def test_status_exits_1_when_paused_and_json_is_the_snapshot(
        served_rig: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    served_rig.engine.pause()
    assert run_status(tmp_path, "--json") == status.EXIT_UNHEALTHY
    snapshot = json.loads(capsys.readouterr().out)
    assert snapshot["state"] == "paused"
    assert {"pending", "recent", "quarantined", "endpoints", "transfer"} <= set(snapshot)


def test_render_lines_up_and_shows_the_transfer() -> None:
    snapshot = {"time": 1000.0, "state": "running", "pending_count": 2,
                "pending": [{"event_id": "a", "age": 125, "last_error": "timeout"},
                            {"event_id": "b", "age": 3, "last_error": None}],
                "transfer": {"event_id": "a", "done": 500_000, "total": 1_000_000,
                             "rate": 250_000.0, "eta": 2.0},
                "endpoints": {"database": {"up": True, "reason": "", "since": 900.0}},
                "recent": [], "quarantined": [], "totals": {"completed": 0, "bytes_sent": 0}}
    text = status.render(snapshot)
    assert "pending   2, oldest 2 min 05 s; 1 failed before and wait for a retry" in text
    assert "transfer  a 50% (500.0 kB of 1.0 MB) at 250.0 kB/s, ETA 2 s" in text
    assert "database  up" in text
    assert status.exit_code(snapshot) == status.EXIT_HEALTHY


def test_low_free_space_for_the_pending_directory_is_shown_and_unhealthy() -> None:
    snapshot = {"time": 1000.0, "state": "idle", "pending_count": 0, "pending": [],
                "endpoints": {}, "recent": [], "quarantined": [],
                "totals": {"completed": 0, "bytes_sent": 0},
                "disk": {"pending_free_bytes": 50_000_000, "low_space": True}}
    text = status.render(snapshot)
    assert "disk" in text and "50.0 MB free for pending (LOW)" in text
    assert "UNHEALTHY: low free space for the pending directory: 50.0 MB left" in text
    assert status.exit_code(snapshot) == status.EXIT_UNHEALTHY


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    key = tmp_path / "key"
    key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    key.chmod(0o600)
    config = {"uploader": {
        "pending_upload_dir": str(tmp_path / "pending"),
        "uploaded_dir": str(tmp_path / "uploaded"),
        "failed_dir": str(tmp_path / "failed"),
        # No job is ever written: the endpoints are never contacted.
        "sftp": {"host": "127.0.0.1", "port": 1, "username": "x", "ssh_key_path": str(key),
                 "remote_video_dir": "/v", "remote_json_dir": "/j"},
        "database": {"host": "127.0.0.1", "port": 1, "dbname": "x", "user": "x"},
    }}
    path = tmp_path / "uploader.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_run_serves_the_socket_and_removes_it_on_sigterm(config_file: Path) -> None:
    sock = config_file.parent / "uploader.sock"
    service = subprocess.Popen([UPLOADER, "run", "-c", str(config_file)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert service.poll() is None, service.communicate()
            assert time.monotonic() < deadline, "the control socket never appeared"
            time.sleep(0.02)  # polling with a deadline
        result = subprocess.run([UPLOADER, "status", "-c", str(config_file)],
                                capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == status.EXIT_HEALTHY, result.stderr
        assert "engine" in result.stdout
        assert oct(os.stat(sock).st_mode & 0o777) == "0o660"
    finally:
        service.send_signal(signal.SIGTERM)
        _, err = service.communicate(timeout=30)
    assert service.returncode == 0, err
    assert "control socket listening on" in err
    assert not sock.exists()
