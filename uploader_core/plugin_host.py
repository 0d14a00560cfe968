"""The engine's plugin host: one pluggy manager per engine, never a global one.

An entry point names a module of hook functions or a class; a class is instantiated once per
engine. Built-in plugins are found through the same ``uploader.plugins`` entry-point group as
third-party ones. Policy when an entry point fails to import: the engine refuses to start,
naming the plugin and the setting that disables it. A plugin can veto uploads or store data
elsewhere, so running silently without one could upload what its owner meant to hold back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .config import Section
from .errors import ConfigurationError
from .job import (
    CheckResult,
    Job,
    ProgressCallback,
    RecordState,
    TransferReceipt,
    UpcomingJob,
)
from .plugin import ENTRY_POINT_GROUP, PROJECT_NAME

log = logging.getLogger(__name__)


class PluginHost:
    """Owns the plugin manager and offers the engine one typed method per hook."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)

    # --- registration

    def register(self, plugin: object, name: str) -> None:
        self._pm.register(plugin, name=name)

    def load_entry_points(self, disabled: Iterable[str] = ()) -> None:
        """Register every plugin of the ``uploader.plugins`` group not named in ``disabled``."""
        skip = set(disabled)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in skip:
                log.info("plugin %s is disabled by configuration", ep.name)
                continue
            if self._pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
                # A class gets one instance per engine, so engines in one process never
                # share a plugin's connections or settings.
                if isinstance(plugin, type):
                    plugin = plugin()
            except Exception as exc:
                raise ConfigurationError(
                    f"plugin {ep.name!r} ({ep.value}) failed to load: "
                    f"{type(exc).__name__}: {exc}; add it to uploader.plugins.disabled "
                    "to run without it",
                    setting="uploader.plugins.disabled",
                ) from exc
            self.register(plugin, ep.name)
        self._pm.check_pending()

    def names(self) -> list[str]:
        return sorted(n for n, _ in self._pm.list_name_plugin() if n is not None)

    def get(self, name: str) -> object | None:
        return self._pm.get_plugin(name)

    def implements(self, hook_name: str) -> bool:
        return bool(getattr(self._pm.hook, hook_name).get_hookimpls())

    def plugins_implementing(self, hook_name: str) -> set[int]:
        """Which plugin objects implement ``hook_name``, by ``id()`` (plugins need not hash)."""
        return {id(impl.plugin) for impl in getattr(self._pm.hook, hook_name).get_hookimpls()}

    # --- typed calls

    def config_sections(self) -> dict[str, Section]:
        merged: dict[str, Section] = {}
        for sections in self._pm.hook.uploader_config_sections():
            for name, section in sections.items():
                if name in merged:
                    raise ConfigurationError(f"two plugins both define 'uploader.{name}'")
                merged[name] = section
        return merged

    def configure(self, config: Mapping[str, Any]) -> None:
        self._pm.hook.uploader_configure(config=config)

    def _call_each(self, hook_name: str, what: str, **kwargs: Any) -> None:
        """Call every implementation; one failing is logged and does not stop the others."""
        for impl in reversed(getattr(self._pm.hook, hook_name).get_hookimpls()):
            try:
                impl.function(*(kwargs[arg] for arg in impl.argnames))
            except Exception:
                log.exception("plugin %s failed %s", impl.plugin_name, what)

    def interrupt(self) -> None:
        self._call_each("uploader_interrupt", "to interrupt")

    def shutdown(self) -> None:
        self._call_each("uploader_shutdown", "to shut down cleanly")

    def pre_upload(self, job: Job) -> None:
        self._pm.hook.pre_upload(job=job)

    def store_metadata(self, job: Job) -> list[RecordState]:
        return list(self._pm.hook.store_metadata(job=job))

    def transfer_files(self, job: Job, progress: ProgressCallback,
                       upcoming: UpcomingJob) -> list[TransferReceipt]:
        return list(self._pm.hook.transfer_files(job=job, progress=progress, upcoming=upcoming))

    def mark_completed(self, job: Job, receipts: Sequence[TransferReceipt]) -> None:
        self._pm.hook.mark_completed(job=job, receipts=receipts)

    def post_archive(self, job: Job) -> None:
        self._call_each("post_archive", f"in post_archive for {job.event_id}", job=job)

    def post_quarantine(self, event_id: str, reason: str) -> None:
        self._call_each("post_quarantine", f"in post_quarantine for {event_id}",
                        event_id=event_id, reason=reason)

    def confirm_completed(self, event_ids: Sequence[str]) -> set[str] | None:
        """The ids of ``event_ids`` that every answering plugin confirms completed.

        ``None`` when no plugin answers (none implements the hook, or each returned None):
        then nothing can be confirmed. Errors of the plugins propagate.
        """
        ids = list(event_ids)
        answers = self._pm.hook.confirm_completed(event_ids=ids)
        if not answers:
            return None
        confirmed = set(ids)
        for answer in answers:
            confirmed.intersection_update(answer)
        return confirmed

    def init_storage(self) -> None:
        self._pm.hook.uploader_init_storage()

    def check(self) -> list[CheckResult]:
        results: list[CheckResult] = []
        for batch in self._pm.hook.uploader_check():
            results.extend(batch)
        return results
