"""Fixtures for fast engine tests with the in-memory plugins of ``uploader_core.testing``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_rig import Rig, base_config

from uploader_core import DataUploader
from uploader_core.testing import memory_plugins


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


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Tests that call the CLI in-process install its stderr handler: take it out again, or
    later log records would go to a capture stream pytest has closed."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
