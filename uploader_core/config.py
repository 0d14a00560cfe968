"""Configuration: a small schema, validation that names every problem, and YAML loading.

The engine owns the top level of the ``uploader`` section; plugins contribute the sections
they own (``sftp``, ``database``, ...) through the ``uploader_config_sections`` hook, so the
engine validates keys it knows nothing about with the same rules and messages.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml

from . import cpu
from .errors import ConfigurationError, InvalidConfiguration

_REQUIRED: Any = object()


@dataclass(frozen=True)
class Field:
    """One configuration key.

    ``kind`` is one of ``int``, ``float``, ``str``, ``bool``, ``list`` (of strings).
    A field without a default is required.
    """

    kind: type
    default: Any = _REQUIRED
    help: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


Section = Mapping[str, Union[Field, "Section"]]

_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list of strings"}


def _type_name(value: Any) -> str:
    return repr(value) if isinstance(value, (str, int, float, bool)) else type(value).__name__


def _coerce(path: str, spec: Field, value: Any, problems: list[str]) -> Any:
    kind = spec.kind
    if value is None and not spec.required and spec.default is None:
        return None
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif kind is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        problems.append(f"{path}: expected {_KIND_NAMES.get(kind, kind.__name__)}, "
                        f"got {_type_name(value)}")
        return None
    if spec.choices is not None and value not in spec.choices:
        options = ", ".join(repr(c) for c in spec.choices)
        problems.append(f"{path}: must be one of {options}, got {value!r}")
    if spec.minimum is not None and value < spec.minimum:
        problems.append(f"{path}: must be at least {spec.minimum:g}, got {value!r}")
    if spec.maximum is not None and value > spec.maximum:
        problems.append(f"{path}: must be at most {spec.maximum:g}, got {value!r}")
    if kind is str and spec.required and value == "":
        problems.append(f"{path}: must not be empty")
    return value


def validate_section(path: str, schema: Section, given: Any, problems: list[str]) -> dict[str, Any]:
    """Check ``given`` against ``schema``; return it with defaults filled in.

    Every problem is appended to ``problems`` as ``key.path: what is wrong``.
    """
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        problems.append(f"{path}: expected a mapping, got {_type_name(given)}")
        given = {}
    result: dict[str, Any] = {}
    for key, _value in given.items():
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            problems.append(f"{path}.{key}: unknown key{hint}")
    for key, spec in schema.items():
        key_path = f"{path}.{key}"
        if isinstance(spec, Field):
            if key in given:
                result[key] = _coerce(key_path, spec, given[key], problems)
            elif spec.required:
                problems.append(f"{key_path}: required")
            else:
                result[key] = spec.default
        else:
            result[key] = validate_section(key_path, spec, given.get(key), problems)
    return result


CORE_SECTION: Section = {
    "scan_interval_seconds": Field(float, 30.0, "seconds between scans", minimum=0),
    "pending_upload_dir": Field(str, "data/pending_upload", "where Module B drops packages"),
    "uploaded_dir": Field(str, "data/uploaded", "archive of uploaded packages"),
    "failed_dir": Field(str, "data/failed", "quarantine of packages that can never upload"),
    "settle_seconds": Field(float, 2.0, "both files unchanged this long before upload",
                            minimum=0),
    "orphan_timeout_seconds": Field(float, 3600.0, "a JSON without video is quarantined after",
                                    minimum=0),
    "max_metadata_bytes": Field(int, 4 * 1024 * 1024, "largest JSON document accepted",
                                minimum=2),
    "workers": Field(int, 1, "jobs uploaded in parallel, each with its own connections",
                     minimum=1, maximum=16),
    "cpu_affinity": Field(str, cpu.ONE, "one: the service's threads share the CPU it starts "
                          "on (the interpreter runs one thread at a time, and handing it "
                          "between CPUs costs more than it gains); inherited: leave them to "
                          "the kernel", choices=cpu.CHOICES),
    "log_level": Field(str, "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    "watch_pending_dir": Field(bool, True, "start a pass as soon as a new package settles "
                               "(inotify); the periodic scan stays as the safety net"),
    "retry": {
        "initial_backoff_seconds": Field(float, 5.0, minimum=0),
        "max_backoff_seconds": Field(float, 300.0, minimum=0),
    },
    "plugins": {
        "disabled": Field(list, [], "plugin names not to load, built-in or third-party"),
    },
    "control": {
        "enabled": Field(bool, True, "serve the control socket to uploader status and tui"),
        "socket_path": Field(str, None, "default: uploader.sock beside pending_upload_dir"),
        "group": Field(str, None, "group allowed to attach; default: the engine's group"),
    },
    "retention": {
        "max_age_days": Field(float, None, "delete archived packages older than this",
                              minimum=0),
        "max_total_bytes": Field(int, None, "keep the archive at most this large", minimum=0),
        "min_free_bytes": Field(int, None, "keep this much free on the archive's filesystem",
                                minimum=0),
        "interval_seconds": Field(float, 600.0, "least time between two retention runs",
                                  minimum=0),
        "low_space_warning_bytes": Field(int, None, "warn when the pending directory's "
                                         "filesystem has less free space", minimum=0),
    },
    "metrics": {
        "textfile_path": Field(str, None, "node_exporter textfile (*.prom), rewritten per pass"),
        "http_port": Field(int, None, "serve /metrics on 127.0.0.1 at this port",
                           minimum=1, maximum=65535),
    },
}


def disabled_plugins(config: Mapping[str, Any]) -> list[str]:
    """The plugin names to skip, read before the plugins that define the schema are loaded."""
    section = config.get("uploader")
    plugins = section.get("plugins") if isinstance(section, Mapping) else None
    disabled = plugins.get("disabled") if isinstance(plugins, Mapping) else None
    if disabled is None:
        return []
    if not isinstance(disabled, list) or not all(isinstance(n, str) for n in disabled):
        raise InvalidConfiguration(["uploader.plugins.disabled: expected a list of strings"])
    return list(disabled)


def validate(config: Any, plugin_sections: Mapping[str, Section]) -> dict[str, Any]:
    """Validate the whole configuration dict; return its ``uploader`` section, completed.

    Other top-level sections belong to other modules of the device and are left alone.
    """
    if not isinstance(config, Mapping):
        raise InvalidConfiguration([f"configuration: expected a mapping, got {_type_name(config)}"])
    if "uploader" not in config:
        raise InvalidConfiguration(["uploader: required (the uploader's own section)"])
    schema: dict[str, Any] = dict(CORE_SECTION)
    for name, section in plugin_sections.items():
        if name in schema:
            raise ConfigurationError(f"two parts of the uploader both define 'uploader.{name}'")
        schema[name] = section
    problems: list[str] = []
    result = validate_section("uploader", schema, config["uploader"], problems)
    if problems:
        raise InvalidConfiguration(problems)
    return result


def load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML configuration file with the same structure as the configuration dict."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read configuration file {file}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"configuration file {file} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"configuration file {file}: expected a mapping at the top")
    return data


def resolve_secret(section: Mapping[str, Any], key: str, setting_path: str) -> str | None:
    """A secret given inline as ``key``, or through ``key_env`` or ``key_file``.

    At most one of the three may be set. The value is never put into a message.
    """
    inline, env, file = section.get(key), section.get(f"{key}_env"), section.get(f"{key}_file")
    given = [name for name, v in ((key, inline), (f"{key}_env", env), (f"{key}_file", file)) if v]
    if len(given) > 1:
        raise ConfigurationError(
            f"set only one of {', '.join(given)}", setting=f"{setting_path}.{key}"
        )
    if env:
        if env not in os.environ:
            raise ConfigurationError(
                f"environment variable {env} is not set", setting=f"{setting_path}.{key}_env"
            )
        return os.environ[env]
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read secret file {file}: {exc.strerror}",
                setting=f"{setting_path}.{key}_file",
            ) from exc
    return inline if inline else None


ENV_PREFIX = "UPLOADER__"


def apply_environment(config: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """The configuration with ``UPLOADER__<KEY>__<KEY>...`` environment variables applied.

    ``UPLOADER__DATABASE__PASSWORD=s3cret`` sets ``uploader.database.password``;
    ``UPLOADER__SCAN_INTERVAL_SECONDS=10`` sets ``uploader.scan_interval_seconds``. Levels are
    separated by a double underscore because key names contain single ones. Values are read
    as YAML, so numbers, booleans and lists (``[audit]``) keep their types; quote a value to
    keep it text. Unknown keys are then reported by validation like any other.
    """
    result: dict[str, Any] = _deep_copy(config)
    section = result.setdefault("uploader", {})
    if not isinstance(section, dict):
        return result
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or len(name) == len(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        if any(not part for part in path):
            raise InvalidConfiguration([f"environment variable {name}: empty key in the name"])
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        target = section
        for part in path[:-1]:
            child = target.get(part)
            if not isinstance(child, dict):
                child = target[part] = {}
            target = child
        target[path[-1]] = value
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
