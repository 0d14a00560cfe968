"""Every hook the engine calls, grouped by when it is called.

Conventions for implementers:

- Implementations are called with keyword arguments and must not give parameters defaults.
- Raise the engine's own errors (:mod:`uploader_core.errors`), translating driver exceptions
  with ``raise ... from exc``. What each error type makes the engine do is described once in
  that module; any other exception escaping a phase hook is treated as transient and logged
  with its traceback, so a plugin bug never quarantines a job.
- Each job goes through its phase hooks in order, and one plugin object is never called from
  two threads at once. Within a worker, neighbouring jobs overlap: ``transfer_files`` runs on
  the worker's transfer thread while the worker's thread calls the other phase hooks for the
  jobs before and after it, unless a plugin that transfers also implements one of those hooks
  (then every hook runs on the worker's thread, one job after the other). With one worker
  (the default) the worker's thread is the engine's; with several, each worker has a thread
  and plugin objects of its own.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from .config import Section
from .job import (
    CheckResult,
    Job,
    ProgressCallback,
    RecordState,
    TransferReceipt,
    UpcomingJob,
)
from .plugin import hookspec

# --- set-up and tear-down ------------------------------------------------------------------------


@hookspec
def uploader_config_sections() -> Mapping[str, Section]:
    """Called once while the engine is built, before the configuration is validated.

    Return the sections of the ``uploader`` configuration this plugin owns, keyed by name
    (``{"sftp": {...}}``), each a mapping of key to :class:`uploader_core.config.Field`. Their
    keys are validated with the engine's own rules: unknown keys are errors. Two plugins
    claiming the same section is a configuration error.
    """


@hookspec
def uploader_configure(config: Mapping[str, Any]) -> None:
    """Called once while the engine is built, with the validated ``uploader`` section.

    Read settings here and fail early; do not connect to anything yet (connections are made
    when first needed, so an engine can start while its endpoints are down). Raising
    :class:`ConfigurationError` refuses to build the engine.

    Called again when the configuration is reloaded (SIGHUP), between jobs: apply the new
    settings, and drop a connection whose endpoint settings changed so the next use makes a
    new one. Raising :class:`ConfigurationError` then keeps the engine on its old settings.
    No transfer is under way then, whatever the number of workers: with several, a reload
    asked for during a pass waits until the pass has ended.
    """


@hookspec
def uploader_interrupt() -> None:
    """Called from another thread when the engine is asked to stop.

    Make blocking network operations of the engine's thread return promptly (for example by
    shutting down their sockets); they should then raise :class:`Interrupted`, and so should
    every later phase call until ``uploader_shutdown``: the engine is going away. Must be
    thread-safe and quick; must not raise.
    """


@hookspec
def uploader_shutdown() -> None:
    """Called once when the engine stops, after the last job of its last pass.

    Takes no arguments and returns nothing. Close connections and release what the plugin
    holds. Exceptions are logged and ignored, so that every plugin gets to close.
    """


# --- the phases of one job, in order


@hookspec
def pre_upload(job: Job) -> None:
    """Called before phase 1, once the package has been read and validated.

    ``job`` is the validated package. Return nothing. Raise :class:`PermanentJobError` to
    reject the package (it is quarantined with your message), or :class:`TransientError` to
    postpone it to a later pass.
    """


@hookspec
def store_metadata(job: Job) -> RecordState | None:
    """Phase 1: record the event's metadata, idempotently.

    Called for every attempt of a job, including retries after a crash at any later point, so
    it must never create a second record of the same event. Return
    :attr:`RecordState.COMPLETED` when the record shows the event already completed with this
    same content, :attr:`RecordState.PENDING` otherwise, or ``None`` if this plugin keeps no
    record. When every implementation that answered says COMPLETED, the engine skips phases 2
    and 3 and archives the files. Raise :class:`PermanentJobError` when the store refuses the
    data itself (it quarantines the job).
    """


@hookspec
def transfer_files(job: Job, progress: ProgressCallback,
                   upcoming: UpcomingJob) -> TransferReceipt | None:
    """Phase 2: copy the video, then the JSON document, to a remote store.

    Upload ``job.open_video()`` and ``job.document`` (never read the video whole into
    memory) so that the final remote files appear complete or not at all. Call ``progress``
    as bytes go out; it raises :class:`Interrupted` when the engine is stopping. Return a
    :class:`TransferReceipt` saying where the files are, or ``None`` if this plugin does not
    transfer. At least one implementation must return a receipt.

    ``upcoming()`` never blocks: it returns the job this worker will most likely transfer
    next, once that job is recorded, else ``None``. A plugin may use it to start that job's
    transfer early (the SFTP plugin sends its opens while this job's last answers are on
    their way), but the next call may be for another job, or may not come (the pass
    stopped): what was started must then be undone or harmless. Plugins that do not look
    ahead leave the argument out of their signature.

    This runs on the worker's transfer thread, one transfer at a time, while the worker's
    thread records the next job and completes the one before. It may be called
    while ``uploader_configure`` has not yet applied a reload (reloads wait for the transfer
    under way), and ``post_quarantine`` is never called during it.
    """


@hookspec
def mark_completed(job: Job, receipts: Sequence[TransferReceipt]) -> None:
    """Phase 3: record that the files of ``job`` are safely stored.

    ``receipts`` are the results of ``transfer_files`` in call order; the first is the
    primary copy. Idempotent, like ``store_metadata``. Raising leaves the local files in
    place and the job is retried (possibly transferring again).
    """


@hookspec
def post_archive(job: Job) -> None:
    """Called after phase 4, once the package is in the archive directory.

    ``job.video_path`` and ``job.json_path`` still name the original pending locations.
    Nothing can be undone any more: exceptions are logged and otherwise ignored. The archive
    moves run while the worker's next job starts, so this call may come after that job's first
    hooks; it is still made on the worker's thread, before the pass ends.
    """


@hookspec
def post_quarantine(event_id: str, reason: str) -> None:
    """Called after a package was moved to the failed directory.

    ``event_id`` is the package's file stem (it may not be a valid event id: that can be why it
    was quarantined), ``reason`` the message in its error report. Use it to release what the
    job held remotely, such as partial uploads. Exceptions are logged and otherwise ignored.
    """


# --- commands


@hookspec
def uploader_init_storage() -> None:
    """Called by ``uploader init-db``: create what the plugin's remote store needs.

    Must be safe to run any number of times. Raise :class:`ConfigurationError` or
    :class:`EndpointUnavailable` with a message saying what failed.
    """


@hookspec
def uploader_check() -> Sequence[CheckResult]:
    """Called by ``uploader check``: try the plugin's endpoint for real.

    Return one :class:`CheckResult` per item (reachable, host key, authentication, directory
    writable, table present, ...). Must not raise for a failed item: report it.
    """


# --- housekeeping


@hookspec
def confirm_completed(event_ids: Sequence[str]) -> Collection[str] | None:
    """Called by archive retention, between passes, before it deletes archived packages.

    ``event_ids`` is a batch of at most a few hundred valid event ids, oldest package first.
    Return those whose record says the event is completed (uploaded and recorded), or
    ``None`` if this plugin keeps no record. A package is deleted only when every plugin that
    answered confirms its id; when no plugin answers, nothing is ever deleted. Must not change
    anything. Raise :class:`EndpointUnavailable` (or any error) when the store cannot be
    asked: that run of retention then deletes nothing more and is tried again later.
    """
