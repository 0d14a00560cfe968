"""The plugin host: registration, disabling by name, the load-failure policy, documented hooks."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from engine_rig import base_config

from uploader_core import ConfigurationError, DataUploader, hookimpl, hookspecs
from uploader_core.plugin_host import PluginHost
from uploader_core.testing import memory_plugins, write_package


class Recorder:
    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def pre_upload(self, job: Any) -> None:
        self.seen.append(f"pre:{job.event_id}")

    @hookimpl
    def post_archive(self, job: Any) -> None:
        self.seen.append(f"post:{job.event_id}")
        raise RuntimeError("a broken post_archive must not undo anything")


def test_third_party_hooks_run_around_the_phases(tmp_path: Path) -> None:
    _, _, plugins = memory_plugins()
    recorder = Recorder()
    engine = DataUploader(base_config(tmp_path), plugins=[*plugins, ("recorder", recorder)],
                          load_entry_points=False)
    write_package(tmp_path / "pending", "evt_1")
    [result] = engine.run_once()
    assert result.outcome.value == "completed"
    assert recorder.seen == ["pre:evt_1", "post:evt_1"]


def test_any_plugin_can_be_disabled_by_name(tmp_path: Path) -> None:
    _, _, plugins = memory_plugins()
    recorder = Recorder()
    config = base_config(tmp_path, plugins={"disabled": ["recorder"]})
    engine = DataUploader(config, plugins=[*plugins, ("recorder", recorder)],
                          load_entry_points=False)
    assert "recorder" not in engine.plugin_names
    write_package(tmp_path / "pending", "evt_1")
    engine.run_once()
    assert recorder.seen == []


def test_engine_without_a_transfer_plugin_refuses_to_start(tmp_path: Path) -> None:
    _, _, plugins = memory_plugins()
    config = base_config(tmp_path, plugins={"disabled": ["memory_remote"]})
    with pytest.raises(ConfigurationError, match="no plugin transfers files"):
        DataUploader(config, plugins=plugins, load_entry_points=False)


def test_builtin_plugins_are_ordinary_entry_points() -> None:
    host = PluginHost()
    host.load_entry_points()
    assert {"postgres", "sftp"} <= set(host.names())


def test_broken_entry_point_stops_startup_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    broken = metadata.EntryPoint(name="broken", value="no_such_module_xyz:Plugin",
                                 group="uploader.plugins")
    monkeypatch.setattr("uploader_core.plugin_host.entry_points",
                        lambda group: [broken])
    host = PluginHost()
    with pytest.raises(ConfigurationError) as info:
        host.load_entry_points()
    assert "'broken'" in str(info.value) and "uploader.plugins.disabled" in str(info.value)
    PluginHost().load_entry_points(disabled=["broken"])  # and disabling it is the way out


def test_each_engine_gets_its_own_plugin_instances(tmp_path: Path) -> None:
    a, b = PluginHost(), PluginHost()
    a.load_entry_points()
    b.load_entry_points()
    assert a.get("postgres") is not None
    assert a.get("postgres") is not b.get("postgres")


@pytest.mark.parametrize("name", [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
                                  if hasattr(f, "uploader_spec")])
def test_every_hook_is_documented(name: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert doc.startswith("Called") or doc.startswith("Phase"), name
    assert len(doc.split()) >= 25, f"{name} needs a docstring saying when, args, return, raise"
