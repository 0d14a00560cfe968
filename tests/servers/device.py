"""A device's side of a test or benchmark: its local directories and its configuration.

The integration tests and the benchmark both run the real engine against the servers started
here, from directories laid out the same way; they differ only in how long they let a server
take to answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .endpoints import PostgresEndpoint, SftpDirs


@dataclass
class DeviceDirs:
    """The directories of one device under ``root``."""

    root: Path

    @property
    def pending(self) -> Path:
        return self.root / "pending"

    @property
    def uploaded(self) -> Path:
        return self.root / "uploaded"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    def make_dirs(self) -> None:
        for path in (self.pending, self.uploaded, self.failed):
            path.mkdir(parents=True, exist_ok=True)


def device_config(root: Path, pg: PostgresEndpoint, sftp: SftpDirs, *,
                  connect_timeout_seconds: float, statement_timeout_seconds: float,
                  sftp_timeout_seconds: float, **overrides: Any) -> dict[str, Any]:
    """The uploader configuration of a device at ``root``: packages taken as soon as they
    are seen, retries at once, a scan every 0.2 s; ``overrides`` replace whole settings."""
    dirs = DeviceDirs(root)
    section: dict[str, Any] = {
        "pending_upload_dir": str(dirs.pending),
        "uploaded_dir": str(dirs.uploaded),
        "failed_dir": str(dirs.failed),
        "scan_interval_seconds": 0.2,
        "settle_seconds": 0,
        "retry": {"initial_backoff_seconds": 0, "max_backoff_seconds": 0},
        "database": {**pg.config_section(),
                     "connect_timeout_seconds": connect_timeout_seconds,
                     "statement_timeout_seconds": statement_timeout_seconds},
        "sftp": {**sftp.config_section(), "timeout_seconds": sftp_timeout_seconds},
    }
    section.update(overrides)
    return {"uploader": section}
