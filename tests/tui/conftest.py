"""A real engine (in-memory plugins) behind a real control socket, for the TUI's tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tui_engine import LiveEngine

from uploader_core import DataUploader
from uploader_core.testing import memory_plugins


@pytest.fixture
def make_engine(tmp_path: Path) -> Iterator[Callable[..., LiveEngine]]:
    made: list[LiveEngine] = []

    def make(**overrides: Any) -> LiveEngine:
        root = tmp_path / f"engine{len(made)}"
        section: dict[str, Any] = {
            "pending_upload_dir": str(root / "pending"),
            "uploaded_dir": str(root / "uploaded"),
            "failed_dir": str(root / "failed"),
            "scan_interval_seconds": 0.05,
            "settle_seconds": 0,
            "retry": {"initial_backoff_seconds": 0, "max_backoff_seconds": 0},
            **overrides,
        }
        store, remote, plugins = memory_plugins()
        engine = DataUploader({"uploader": section}, plugins=plugins, load_entry_points=False)
        live = LiveEngine(engine, store, remote, root, tmp_path / "u.sock")
        made.append(live)
        return live

    yield make
    for live in made:
        live.stop()


@pytest.fixture
def utc() -> Iterator[None]:
    """Times render in UTC, so that snapshots do not depend on the machine's zone."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()
