"""One device's view of the session's real servers, for the integration tests."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml
from servers import PostgresEndpoint, SftpDirs
from servers.device import DeviceDirs, device_config

from uploader_core import DataUploader

HERE = Path(__file__).parent
DRIVER = HERE / "engine_driver.py"


@dataclass
class Site(DeviceDirs):
    """One device's directories and configuration against the test's servers."""

    config: dict[str, Any]
    pg: PostgresEndpoint
    sftp: SftpDirs

    def engine(self, **kwargs: Any) -> DataUploader:
        return DataUploader(self.config, **kwargs)

    def write_config(self, name: str = "uploader.yaml") -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        path.write_text(yaml.safe_dump(self.config))
        return path

    def rows(self) -> dict[str, dict[str, Any]]:
        with psycopg.connect(self.pg.conninfo()) as conn, conn.cursor() as cur:
            cur.execute("SELECT event_id, status, remote_video_path, remote_json_path, "
                        "video_sha256, attempts FROM events")
            names = [d.name for d in cur.description or ()]
            return {row[0]: dict(zip(names, row, strict=False)) for row in cur.fetchall()}

    def remote_video(self, event_id: str) -> Path:
        return self.sftp.local_video_dir / f"{event_id}.mp4"

    def remote_json(self, event_id: str) -> Path:
        return self.sftp.local_json_dir / f"{event_id}.json"

    def remote_leftovers(self) -> list[str]:
        """Temporary files on the server: there must be none once the queue has drained."""
        return sorted(p.name for d in (self.sftp.local_video_dir, self.sftp.local_json_dir)
                      for p in d.iterdir() if p.name.startswith("."))

    def assert_completed_exactly_once(self, originals: dict[str, dict[str, bytes]]) -> None:
        """Every event: one completed row, byte-identical remote copies, archived locally."""
        rows = self.rows()
        assert sorted(rows) == sorted(originals)
        for event_id, files in originals.items():
            row = rows[event_id]
            assert row["status"] == "completed", event_id
            assert row["remote_video_path"] == f"{self.sftp.remote_video_dir}/{event_id}.mp4"
            assert row["remote_json_path"] == f"{self.sftp.remote_json_dir}/{event_id}.json"
            assert self.remote_video(event_id).read_bytes() == files["mp4"], event_id
            assert self.remote_json(event_id).read_bytes() == files["json"], event_id
            assert row["video_sha256"] == hashlib.sha256(files["mp4"]).hexdigest()
            assert (self.uploaded / f"{event_id}.mp4").read_bytes() == files["mp4"]
            assert (self.uploaded / f"{event_id}.json").read_bytes() == files["json"]
        assert [p.name for p in self.pending.iterdir() if not p.name.startswith(".")] == []
        assert self.remote_leftovers() == []


def snapshot(pending: Path) -> dict[str, dict[str, bytes]]:
    """The bytes of every package in ``pending``, by event id and suffix."""
    packages: dict[str, dict[str, bytes]] = {}
    for path in pending.iterdir():
        if path.name.startswith("."):
            continue
        stem, _, suffix = path.name.rpartition(".")
        packages.setdefault(stem, {})[suffix] = path.read_bytes()
    return packages


def site_config(root: Path, pg: PostgresEndpoint, sftp: SftpDirs, **overrides: Any
                ) -> dict[str, Any]:
    # Short timeouts: a fault test waits out each one.
    return device_config(root, pg, sftp, connect_timeout_seconds=3,
                         statement_timeout_seconds=5, sftp_timeout_seconds=5, **overrides)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "uploader_core.cli", *args], text=True,
                          capture_output=True, timeout=timeout, env=env)
