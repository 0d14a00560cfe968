"""Helpers for engine tests with the in-memory plugins of ``uploader_core.testing``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uploader_core import DataUploader
from uploader_core.testing import MemoryRemote, MemoryStore


@dataclass
class Rig:
    engine: DataUploader
    store: MemoryStore
    remote: MemoryRemote
    pending: Path
    uploaded: Path
    failed: Path


def base_config(root: Path, **overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "pending_upload_dir": str(root / "pending"),
        "uploaded_dir": str(root / "uploaded"),
        "failed_dir": str(root / "failed"),
        "scan_interval_seconds": 0.05,
        "settle_seconds": 0,
        "retry": {"initial_backoff_seconds": 0, "max_backoff_seconds": 0},
    }
    section.update(overrides)
    return {"uploader": section}


def all_bytes(root: Path) -> dict[str, bytes]:
    """Every package file's bytes under ``root``, by name: for "nothing lost" checks.

    Hidden files (the engine's queue lock) are not packages.
    """
    return {p.name: p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() and not p.name.startswith(".")}


def visible(directory: Path) -> list[str]:
    """Names in ``directory`` that are not hidden."""
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
