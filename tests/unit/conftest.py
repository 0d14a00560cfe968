"""Fast engine tests with the in-memory plugins of ``uploader_core.testing``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from uploader_core import DataUploader
from uploader_core.testing import MemoryRemote, MemoryStore, memory_plugins


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


@pytest.fixture
def make_rig(tmp_path: Path) -> Callable[..., Rig]:
    def make(**overrides: Any) -> Rig:
        store, remote, plugins = memory_plugins()
        engine = DataUploader(base_config(tmp_path, **overrides), plugins=plugins,
                              load_entry_points=False)
        return Rig(engine, store, remote, tmp_path / "pending", tmp_path / "uploaded",
                   tmp_path / "failed")

    return make


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


def all_bytes(root: Path) -> dict[str, bytes]:
    """Every package file's bytes under ``root``, by name: for "nothing lost" checks.

    Hidden files (the engine's queue lock) are not packages.
    """
    return {p.name: p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() and not p.name.startswith(".")}


def visible(directory: Path) -> list[str]:
    """Names in ``directory`` that are not hidden."""
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
