"""Configuration errors name the key path of every problem, before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from engine_rig import base_config

from uploader_core import ConfigurationError, DataUploader
from uploader_core.config import load_file
from uploader_core.errors import InvalidConfiguration
from uploader_core.testing import memory_plugins


def build(config: dict[str, Any]) -> DataUploader:
    _, _, plugins = memory_plugins()
    return DataUploader(config, plugins=plugins, load_entry_points=False)


def problems_of(config: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidConfiguration) as info:
        build(config)
    return info.value.problems


def test_every_problem_is_named_by_its_key_path(tmp_path: Path) -> None:
    config = base_config(tmp_path, scan_interval_seconds="abc", settle_seconds=-1,
                         retry={"initial_backoff_seconds": True})
    config["uploader"]["log_level"] = "LOUD"
    config["uploader"]["cpu_affinity"] = "all"
    problems = problems_of(config)
    assert "uploader.scan_interval_seconds: expected a number, got 'abc'" in problems
    assert "uploader.settle_seconds: must be at least 0, got -1.0" in problems
    assert "uploader.retry.initial_backoff_seconds: expected a number, got True" in problems
    assert any(p.startswith("uploader.log_level: must be one of") for p in problems)
    assert "uploader.cpu_affinity: must be one of 'one', 'inherited', got 'all'" in problems


def test_unknown_key_suggests_the_nearest_valid_name(tmp_path: Path) -> None:
    config = base_config(tmp_path)
    config["uploader"]["scan_intervall_seconds"] = 5
    config["uploader"]["retry"]["max_backof_seconds"] = 5
    problems = problems_of(config)
    assert ("uploader.scan_intervall_seconds: unknown key; did you mean "
            "'scan_interval_seconds'?") in problems
    assert ("uploader.retry.max_backof_seconds: unknown key; did you mean "
            "'max_backoff_seconds'?") in problems


def test_plugin_sections_are_validated_with_the_same_rules(tmp_path: Path) -> None:
    config = base_config(tmp_path)
    config["uploader"]["memory_remote"] = {"notes": "x"}
    assert problems_of(config) == [
        "uploader.memory_remote.notes: unknown key; did you mean 'note'?"]


def test_missing_uploader_section_is_reported() -> None:
    assert problems_of({"capture": {}}) == ["uploader: required (the uploader's own section)"]


def test_other_modules_sections_are_left_alone(tmp_path: Path) -> None:
    config = base_config(tmp_path)
    config["analyzer"] = {"model": "x"}
    assert build(config).settings["settle_seconds"] == 0


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    config = {"uploader": {"pending_upload_dir": str(tmp_path / "p"),
                           "uploaded_dir": str(tmp_path / "u"),
                           "failed_dir": str(tmp_path / "f")}}
    settings = build(config).settings
    assert settings["scan_interval_seconds"] == 30.0
    assert settings["settle_seconds"] == 2.0
    assert settings["retry"]["max_backoff_seconds"] == 300.0


def test_unusable_directory_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file")
    config = base_config(tmp_path, failed_dir=str(tmp_path / "blocker" / "failed"))
    with pytest.raises(ConfigurationError) as info:
        build(config)
    assert info.value.setting == "uploader.failed_dir"


def test_yaml_file_with_the_same_structure_loads(tmp_path: Path) -> None:
    path = tmp_path / "uploader.yaml"
    path.write_text("uploader:\n  scan_interval_seconds: 7\n")
    assert load_file(path) == {"uploader": {"scan_interval_seconds": 7}}


def test_invalid_yaml_says_which_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("uploader: [unclosed\n")
    with pytest.raises(ConfigurationError, match=r"broken\.yaml is not valid YAML"):
        load_file(path)


def test_environment_overrides_any_key_with_typed_values() -> None:
    from uploader_core.config import apply_environment

    config = {"uploader": {"scan_interval_seconds": 30, "database": {"host": "db"}}}
    env = {"UPLOADER__SCAN_INTERVAL_SECONDS": "5", "UPLOADER__DATABASE__PASSWORD": "s3:cret",
           "UPLOADER__SFTP__HOST_KEY_POLICY": "accept-new",
           "UPLOADER__PLUGINS__DISABLED": "[audit]", "UPLOADER_TEST_OTHER": "ignored",
           "UPLOADER__DATABASE__PORT": "6432"}
    result = apply_environment(config, env)
    assert result["uploader"]["scan_interval_seconds"] == 5
    assert result["uploader"]["database"] == {"host": "db", "password": "s3:cret", "port": 6432}
    assert result["uploader"]["sftp"] == {"host_key_policy": "accept-new"}
    assert result["uploader"]["plugins"] == {"disabled": ["audit"]}
    assert config["uploader"]["database"] == {"host": "db"}, "the input is not changed"


def test_unknown_key_from_the_environment_is_reported(tmp_path: Path) -> None:
    from uploader_core.config import apply_environment

    config = apply_environment(base_config(tmp_path), {"UPLOADER__SCAN_INTERVALL": "5"})
    assert problems_of(config) == [
        "uploader.scan_intervall: unknown key; did you mean 'scan_interval_seconds'?"]
