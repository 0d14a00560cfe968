"""Archive retention: keep ``uploaded_dir`` from filling the device's storage.

The archive grows by one package per event forever. Retention deletes the oldest archived
packages (by the modification time of their files, both files of a package together) until
every configured limit holds:

- ``max_age_days``: no package older than this;
- ``max_total_bytes``: the archive's packages add up to at most this;
- ``min_free_bytes``: at least this much is free on the archive's filesystem.

A package is deleted only when the metadata store confirms that its event is completed
(the ``confirm_completed`` hook, asked in batches). When no plugin can confirm, or the store
cannot be reached, nothing is deleted: an archive that outgrows its limits is better than a
video lost. Only ``<event id>.mp4`` and ``<event id>.json`` regular files are considered;
hidden files, temporary files, other names and the pending and failed directories are never
touched, and a package whose id is also in the pending directory (an archive interrupted
between its two moves) is left for the engine to finish.

Retention also watches the free space of the pending directory's filesystem: crossing below
``low_space_warning_bytes`` is logged once, and so is recovering; every run's
:class:`RetentionReport` says where things stand.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from .filing import fsync_dir
from .package import EVENT_ID_PATTERN, JSON_SUFFIX, VIDEO_SUFFIX

log = logging.getLogger("uploader.retention")

BATCH_SIZE = 500  # event ids per confirm_completed call
SECONDS_PER_DAY = 86400.0

Confirm = Callable[[Sequence[str]], "Collection[str] | None"]


class _DiskUsage(Protocol):
    @property
    def free(self) -> int: ...


DiskUsage = Callable[[Path], _DiskUsage]


@dataclass(frozen=True)
class RetentionSettings:
    """The ``uploader.retention`` section; ``None`` or 0 turns a limit off."""

    max_age_days: float | None = None
    max_total_bytes: int | None = None
    min_free_bytes: int | None = None
    interval_seconds: float = 600.0
    low_space_warning_bytes: int | None = None

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> RetentionSettings:
        return cls(
            max_age_days=section.get("max_age_days") or None,
            max_total_bytes=section.get("max_total_bytes") or None,
            min_free_bytes=section.get("min_free_bytes") or None,
            interval_seconds=float(section.get("interval_seconds", 600.0)),
            low_space_warning_bytes=section.get("low_space_warning_bytes") or None,
        )

    @property
    def deletes(self) -> bool:
        """Whether any limit is set, that is whether retention may delete anything."""
        return bool(self.max_age_days or self.max_total_bytes or self.min_free_bytes)

    @property
    def enabled(self) -> bool:
        return self.deletes or bool(self.low_space_warning_bytes)


@dataclass
class ArchivedPackage:
    """The files of one event in the archive; either may be missing."""

    event_id: str
    files: list[Path] = field(default_factory=list)
    size: int = 0
    mtime: float = 0.0  # the newest of its files

    def add(self, path: Path, st: os.stat_result) -> None:
        self.files.append(path)
        self.size += st.st_size
        self.mtime = max(self.mtime, st.st_mtime)


@dataclass(frozen=True)
class RetentionReport:
    """What one run found and did; :meth:`to_json` is ready for the monitor and status."""

    time: float
    archive_packages: int = 0  # after the run
    archive_bytes: int = 0
    deleted: tuple[str, ...] = ()
    deleted_bytes: int = 0
    kept_unconfirmed: int = 0  # over a limit, but not confirmed completed: kept
    limits_met: bool = True
    archive_free_bytes: int | None = None
    pending_free_bytes: int | None = None
    low_space: bool = False  # the pending filesystem is below low_space_warning_bytes
    problem: str | None = None  # why retention could not do all it should

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "archive_packages": self.archive_packages,
            "archive_bytes": self.archive_bytes,
            "deleted_count": len(self.deleted),
            "deleted_bytes": self.deleted_bytes,
            "kept_unconfirmed": self.kept_unconfirmed,
            "limits_met": self.limits_met,
            "archive_free_bytes": self.archive_free_bytes,
            "pending_free_bytes": self.pending_free_bytes,
            "low_space": self.low_space,
            "problem": self.problem,
        }


class _Unconfirmable(Exception):
    """Internal: the store cannot say which packages are completed; delete nothing more."""


@dataclass
class _Level:
    """The archive's size and its filesystem's free space as deletions proceed."""

    total: int
    free: int | None

    def freed(self, size: int) -> None:
        self.total -= size
        if self.free is not None:
            self.free += size


class Retention:
    """Deletes the oldest confirmed-completed archived packages until the limits hold.

    ``settings`` is the validated ``uploader.retention`` section (or a
    :class:`RetentionSettings`). ``confirm`` takes a batch of event ids and returns those the
    store confirms completed, or ``None`` when nothing can confirm (for the engine:
    ``PluginHost.confirm_completed``). ``pending_dir`` enables the low-space warning and
    protects half-archived packages. ``disk_usage``, ``clock`` (wall time, for ages) and
    ``monotonic`` (for the interval) can be replaced in tests. ``should_stop`` is checked
    between deletions so that a long first run does not delay a stop.

    Not thread-safe: call it from one thread (the engine's, between passes).
    """

    def __init__(
        self,
        settings: Mapping[str, Any] | RetentionSettings,
        archive_dir: str | os.PathLike[str],
        confirm: Confirm | None,
        *,
        pending_dir: str | os.PathLike[str] | None = None,
        disk_usage: DiskUsage = shutil.disk_usage,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = RetentionSettings()
        self.reconfigure(settings)
        self.archive_dir = Path(archive_dir)
        self.pending_dir = None if pending_dir is None else Path(pending_dir)
        self._confirm = confirm
        self._disk_usage = disk_usage
        self._clock = clock
        self._monotonic = monotonic
        self._should_stop = should_stop
        self._last_run: float | None = None
        self._reported: dict[str, str] = {}
        self._low_space = False
        self.last_report: RetentionReport | None = None

    def reconfigure(self, settings: Mapping[str, Any] | RetentionSettings) -> None:
        """Apply reloaded settings; the next run uses them (the interval counts on)."""
        self.settings = (settings if isinstance(settings, RetentionSettings)
                         else RetentionSettings.from_config(settings))

    # --- entry points

    def due(self) -> bool:
        if not self.settings.enabled:
            return False
        return (self._last_run is None
                or self._monotonic() - self._last_run >= self.settings.interval_seconds)

    def run_if_due(self) -> RetentionReport | None:
        """:meth:`run_once` when retention is configured and its interval has passed."""
        if not self.due():
            return None
        return self.run_once()

    def run_once(self) -> RetentionReport:
        """Check the pending filesystem's free space, then apply the limits to the archive."""
        self._last_run = self._monotonic()
        now = self._clock()
        pending_free = self._check_pending_space()
        report = RetentionReport(time=now, pending_free_bytes=pending_free,
                                 low_space=self._low_space)
        if self.settings.deletes:
            report = self._apply_limits(report, now)
        self.last_report = report
        return report

    # --- the pending filesystem

    def _check_pending_space(self) -> int | None:
        threshold = self.settings.low_space_warning_bytes
        if self.pending_dir is None or not threshold:
            return None
        try:
            free = int(self._disk_usage(self.pending_dir).free)
        except OSError as exc:
            self._say("pending-space", logging.WARNING,
                      f"cannot read the free space of {self.pending_dir}: {exc.strerror or exc}")
            return None
        self._reported.pop("pending-space", None)
        if free < threshold and not self._low_space:
            self._low_space = True
            log.warning("low free space for the pending directory %s: %s left, below "
                        "uploader.retention.low_space_warning_bytes (%s)", self.pending_dir,
                        _bytes(free), _bytes(threshold))
        elif free >= threshold and self._low_space:
            self._low_space = False
            log.info("free space for the pending directory %s is back above the warning "
                     "level: %s", self.pending_dir, _bytes(free))
        return free

    # --- the archive

    def _apply_limits(self, report: RetentionReport, now: float) -> RetentionReport:
        try:
            packages = sorted(self._list_archive(), key=lambda p: (p.mtime, p.event_id))
        except OSError as exc:
            failure = f"cannot read the archive {self.archive_dir}: {exc.strerror or exc}"
            self._say("archive", logging.ERROR, failure)
            return replace(report, problem=failure, limits_met=False)
        self._reported.pop("archive", None)
        level = _Level(total=sum(p.size for p in packages), free=self._archive_free())
        deleted, kept, problem = self._delete_oldest(packages, level, now)
        if deleted:
            fsync_dir(self.archive_dir)
            log.info("archive retention deleted %d packages (%s), the newest of them from %s; "
                     "the archive holds %d packages (%s)", len(deleted),
                     _bytes(sum(p.size for p in deleted)),
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(deleted[-1].mtime)),
                     len(packages) - len(deleted), _bytes(level.total))
        gone = {p.event_id for p in deleted}
        oldest = next((p for p in packages if p.event_id not in gone), None)
        limits_met = not self._level_over(level) and not (
            oldest is not None and self._too_old(oldest, now))
        self._report_unconfirmed(kept, limits_met)
        return replace(report, archive_packages=len(packages) - len(deleted),
                       archive_bytes=level.total, deleted=tuple(p.event_id for p in deleted),
                       deleted_bytes=sum(p.size for p in deleted), kept_unconfirmed=kept,
                       limits_met=limits_met, archive_free_bytes=level.free, problem=problem)

    def _delete_oldest(self, packages: list[ArchivedPackage], level: _Level, now: float
                       ) -> tuple[list[ArchivedPackage], int, str | None]:
        """Delete confirmed packages, oldest first, while a limit is exceeded.

        ``packages`` is sorted oldest first; ``level`` is updated as space is freed. Returns
        the packages deleted, how many over a limit were kept because they were not
        confirmed, and the problem that stopped the run early, if any.
        """
        deleted: list[ArchivedPackage] = []
        kept = 0
        index = 0
        try:
            while index < len(packages) and self._over_limit(packages[index], level, now):
                # The batch holds the packages that would go if every one were confirmed.
                batch: list[ArchivedPackage] = []
                projected = _Level(level.total, level.free)
                while (index < len(packages) and len(batch) < BATCH_SIZE
                       and self._over_limit(packages[index], projected, now)):
                    batch.append(packages[index])
                    projected.freed(packages[index].size)
                    index += 1
                confirmed = self._confirmed([p.event_id for p in batch])
                for package in batch:
                    if package.event_id not in confirmed:
                        kept += 1
                        continue
                    if self._should_stop():
                        return deleted, kept, "stopped before the limits were met"
                    if self._delete(package):
                        deleted.append(package)
                        level.freed(package.size)
        except _Unconfirmable as exc:
            return deleted, kept, str(exc)
        except OSError as exc:
            problem = (f"cannot delete from the archive {self.archive_dir}: "
                       f"{exc.strerror or exc}")
            self._say("delete", logging.ERROR, f"archive retention stopped: {problem}")
            return deleted, kept, problem
        self._reported.pop("delete", None)
        return deleted, kept, None

    def _list_archive(self) -> Iterable[ArchivedPackage]:
        """Every package in the archive: valid ids, regular files, not also pending."""
        packages: dict[str, ArchivedPackage] = {}
        with os.scandir(self.archive_dir) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                stem, suffix = os.path.splitext(name)
                if suffix not in (VIDEO_SUFFIX, JSON_SUFFIX) or not EVENT_ID_PATTERN.fullmatch(
                        stem):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                package = packages.get(stem)
                if package is None:
                    package = packages[stem] = ArchivedPackage(stem)
                package.add(Path(entry.path), st)
        if self.pending_dir is not None:
            for stem in list(packages):
                if any(os.path.lexists(self.pending_dir / f"{stem}{suffix}")
                       for suffix in (JSON_SUFFIX, VIDEO_SUFFIX)):
                    del packages[stem]
        return packages.values()

    def _archive_free(self) -> int | None:
        if not self.settings.min_free_bytes:
            return None
        try:
            return int(self._disk_usage(self.archive_dir).free)
        except OSError as exc:
            self._say("archive-space", logging.WARNING,
                      f"cannot read the free space of {self.archive_dir}: "
                      f"{exc.strerror or exc}; uploader.retention.min_free_bytes is not applied")
            return None

    def _over_limit(self, package: ArchivedPackage, level: _Level, now: float) -> bool:
        """Whether ``package``, the oldest left, must go for the limits to hold."""
        return self._too_old(package, now) or self._level_over(level)

    def _too_old(self, package: ArchivedPackage, now: float) -> bool:
        days = self.settings.max_age_days
        return bool(days and now - package.mtime > days * SECONDS_PER_DAY)

    def _level_over(self, level: _Level) -> bool:
        s = self.settings
        if s.max_total_bytes and level.total > s.max_total_bytes:
            return True
        return bool(s.min_free_bytes and level.free is not None
                    and level.free < s.min_free_bytes)

    def _confirmed(self, event_ids: list[str]) -> set[str]:
        if self._confirm is None:
            answer = None
        else:
            try:
                answer = self._confirm(event_ids)
            except Exception as exc:
                problem = ("the metadata store could not confirm which archived packages are "
                           f"completed: {exc}")
                self._say("confirm", logging.WARNING,
                          f"archive retention deletes nothing: {problem}; trying again in "
                          f"{self.settings.interval_seconds:.0f} s")
                raise _Unconfirmable(problem) from exc
        if answer is None:
            problem = ("no plugin confirms completed events (hook confirm_completed), so no "
                       "archived package can be deleted")
            self._say("confirm", logging.WARNING, f"archive retention deletes nothing: {problem}")
            raise _Unconfirmable(problem)
        if "confirm" in self._reported:
            log.info("archive retention can confirm completed events again")
            del self._reported["confirm"]
        return set(answer) & set(event_ids)

    def _delete(self, package: ArchivedPackage) -> bool:
        """Delete the package's files, the video first; False if one was not a file any more.

        Raises :class:`OSError` when the filesystem refuses (read-only, permission denied).
        """
        for path in sorted(package.files, key=lambda p: p.suffix != VIDEO_SUFFIX):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        log.debug("archive retention deleted %s (%s)", package.event_id, _bytes(package.size))
        return True

    def _report_unconfirmed(self, kept: int, limits_met: bool) -> None:
        if kept and not limits_met:
            if "unconfirmed" not in self._reported:
                self._reported["unconfirmed"] = "reported"
                log.warning("the archive %s is over its retention limits, but %d of its oldest "
                            "packages are not confirmed completed by the metadata store; they "
                            "are kept", self.archive_dir, kept)
        elif self._reported.pop("unconfirmed", None):
            log.info("the archive %s is within its retention limits again", self.archive_dir)

    def _say(self, key: str, level: int, message: str) -> None:
        """Log ``message`` once; the same message again under ``key`` goes to debug."""
        if self._reported.get(key) == message:
            log.debug("%s", message)
            return
        self._reported[key] = message
        log.log(level, "%s", message)


def _bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")
