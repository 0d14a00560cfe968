"""The audit after the faults, and the summary table.

The audit trusts nothing the engine says about itself: it reads the database directly, lists
the server's directories on disk, hashes every file, and compares all of it with the hashes
the campaign took while writing.

Invariants (each breach is listed, and makes the campaign fail):

- every valid event has exactly one row, ``completed``, with the expected remote paths and the
  video's sha256; its two remote files are byte-identical to the originals; its two local
  files are in the archive, byte-identical;
- every malformed package is in ``failed_dir`` beside ``<id>.error.json``, whose reason
  contains the expected phrase; it has no row and nothing of it reached the server;
- every file the campaign wrote is still somewhere, byte-identical (lost = 0);
- no event has two rows, two remote copies or two archived copies (duplicated = 0);
- no temporary file is left on the server; the pending directory is empty;
- the engine never exited on its own, and stopped on SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from .workload import Package, WrittenFile, describe

_TEMP_REMOTE = re.compile(r"\.(?P<name>.+)\.part")


@dataclass
class Locations:
    """Where the audit looks: local directories, and the server's directories on disk."""

    pending: Path
    uploaded: Path
    failed: Path
    secrets: Path
    remote_video_dir: Path  # on local disk
    remote_json_dir: Path
    remote_video_name: str  # as the SFTP client names it
    remote_json_name: str


@dataclass
class Audit:
    """What the audit found. ``failures`` lists every breached invariant, one line each."""

    valid: int = 0
    malformed: int = 0
    completed: int = 0
    quarantined: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    remote_leftovers: list[str] = field(default_factory=list)
    remote_leftovers_of_quarantined: list[str] = field(default_factory=list)
    local_leftovers: list[str] = field(default_factory=list)
    retries: int = 0  # phase-1 runs beyond the first, summed over the rows
    retried_events: int = 0
    log: Counter[str] = field(default_factory=Counter)
    log_examples: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures.append(message)

    @property
    def passed(self) -> bool:
        return not self.failures


def _rows(conninfo: str) -> tuple[dict[str, dict[str, Any]], list[tuple[str, int]]]:
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        cur.execute("SELECT event_id, status, remote_video_path, remote_json_path, "
                    "video_sha256, json_sha256, video_bytes, json_bytes, attempts FROM events")
        names = [d.name for d in cur.description or ()]
        rows = {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
        cur.execute("SELECT event_id, count(*) FROM events GROUP BY event_id "
                    "HAVING count(*) > 1")
        doubles = [(r[0], int(r[1])) for r in cur.fetchall()]
    return rows, doubles


def _listing(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def _same(found: WrittenFile | None, original: WrittenFile) -> bool:
    if found is None or found.kind != original.kind:
        return False
    if original.kind == "file":
        return found.sha256 == original.sha256
    if original.kind == "symlink":
        return found.link_target == original.link_target
    return True


class _HashIndex:
    """sha256 -> where such bytes are, over every place a file can legitimately end up."""

    def __init__(self, places: Iterable[Path]) -> None:
        self.where: dict[str, list[str]] = {}
        for place in places:
            for name in _listing(place):
                found = describe(place / name)
                if found is not None and found.sha256 is not None:
                    self.where.setdefault(found.sha256, []).append(str(place / name))

    def find(self, sha256: str | None) -> list[str]:
        return self.where.get(sha256 or "", [])


def audit(packages: list[Package], places: Locations, conninfo: str,
          engine_log: Path | None = None) -> Audit:
    result = Audit()
    valid = [p for p in packages if p.valid]
    malformed = [p for p in packages if not p.valid]
    result.valid, result.malformed = len(valid), len(malformed)
    unwritten = [p.stem for p in packages if not p.written]
    if unwritten:
        result.fail(f"{len(unwritten)} packages were never written (campaign cut short): "
                    f"{_few(unwritten)}")
    rows, doubles = _rows(conninfo)
    for event_id, count in doubles:
        result.duplicated.append(f"{event_id}: {count} rows")
    index = _HashIndex([places.pending, places.uploaded, places.failed, places.secrets,
                        places.remote_video_dir, places.remote_json_dir])

    valid_stems = {p.stem for p in valid}
    malformed_stems = {p.stem for p in malformed}
    for pkg in valid:
        _audit_valid(pkg, rows.get(pkg.stem), places, index, result)
    for pkg in malformed:
        _audit_malformed(pkg, rows.get(pkg.stem), places, index, result)

    for event_id in sorted(set(rows) - valid_stems - malformed_stems):
        result.fail(f"a row for {event_id!r}, which the campaign never wrote")
    for row in rows.values():
        if row["event_id"] in valid_stems and row["attempts"] > 1:
            result.retries += row["attempts"] - 1
            result.retried_events += 1

    _audit_remote(places, valid_stems, malformed_stems, result)
    _audit_local(places, valid, malformed, result)
    left = [name for name in _listing(places.pending) if not name.startswith(".")]
    if left:
        result.fail(f"the pending directory still holds {len(left)} entries: {_few(left)}")
    if engine_log is not None:
        _read_log(engine_log, result)
    return result


def _audit_valid(pkg: Package, row: dict[str, Any] | None, places: Locations,
                 index: _HashIndex, result: Audit) -> None:
    stem = pkg.stem
    video, document = pkg.files.get(f"{stem}.mp4"), pkg.files.get(f"{stem}.json")
    if video is None or document is None:
        return  # never written: reported once above
    problems = []
    if row is None:
        problems.append("no row in the database")
    else:
        if row["status"] != "completed":
            problems.append(f"row status is {row['status']!r}")
        if row["remote_video_path"] != f"{places.remote_video_name}/{stem}.mp4":
            problems.append(f"remote_video_path is {row['remote_video_path']!r}")
        if row["remote_json_path"] != f"{places.remote_json_name}/{stem}.json":
            problems.append(f"remote_json_path is {row['remote_json_path']!r}")
        if row["video_sha256"] != video.sha256:
            problems.append("the row's video_sha256 differs from the original's")
        if row["json_sha256"] != document.sha256:
            problems.append("the row's json_sha256 differs from the original's")
    remote_ok = True
    for original, directory in ((video, places.remote_video_dir),
                                (document, places.remote_json_dir)):
        found = describe(directory / original.name)
        if not _same(found, original):
            remote_ok = False
            problems.append(f"remote {original.name} is "
                            + ("missing" if found is None else "different from the original"))
    archived_ok = True
    for original in (video, document):
        found = describe(places.uploaded / original.name)
        if not _same(found, original):
            archived_ok = False
            problems.append(f"archived {original.name} is "
                            + ("missing" if found is None else "different from the original"))
    if os.path.lexists(places.failed / f"{stem}.error.json"):
        reason = _reason(places.failed / f"{stem}.error.json")
        problems.append(f"it was quarantined: {reason}")
    if row is not None and row["status"] == "completed" and not remote_ok:
        result.lost.append(f"{stem}: recorded as completed, but the server's copy is missing "
                           "or different")
    for original in (video, document):
        if not archived_ok and not index.find(original.sha256):
            result.lost.append(f"{original.name}: its bytes are nowhere any more")
    if problems:
        result.fail(f"valid event {stem}: " + "; ".join(problems))
    elif row is not None:
        result.completed += 1


def _audit_malformed(pkg: Package, row: dict[str, Any] | None, places: Locations,
                     index: _HashIndex, result: Audit) -> None:
    stem = pkg.stem
    if not pkg.files:
        return
    problems = []
    report = places.failed / f"{stem}.error.json"
    if not report.exists():
        problems.append("no error report in failed_dir")
    else:
        result.quarantined += 1
        reason = _reason(report)
        if (pkg.expected_reason or "") not in reason:
            problems.append(f"the reason {reason!r} does not say {pkg.expected_reason!r}")
    for key, original in pkg.files.items():
        if key.startswith("secret:"):
            found = describe(places.secrets / original.name)
            if not _same(found, original):
                problems.append(f"the file {original.name} a link pointed to was changed")
            continue
        found = describe(places.failed / original.name)
        if not _same(found, original):
            elsewhere = index.find(original.sha256) if original.sha256 else []
            if original.kind == "file" and not elsewhere:
                result.lost.append(f"{original.name!r} ({pkg.kind}): its bytes are nowhere "
                                   "any more")
            problems.append(f"{original.name!r} is not in failed_dir as written"
                            + (f" (its bytes are at {elsewhere[0]})" if elsewhere else ""))
    if row is not None:
        problems.append(f"it has a row in the database (status {row['status']!r})")
    if problems:
        result.fail(f"malformed package {stem!r} ({pkg.kind}): " + "; ".join(problems))


def _reason(report: Path) -> str:
    try:
        return str(json.loads(report.read_text(encoding="utf-8")).get("reason", ""))
    except (OSError, ValueError, AttributeError) as exc:
        return f"(unreadable report: {exc})"


def _audit_remote(places: Locations, valid: set[str], malformed: set[str],
                  result: Audit) -> None:
    for directory, suffix in ((places.remote_video_dir, ".mp4"),
                              (places.remote_json_dir, ".json")):
        for name in _listing(directory):
            if name.startswith("."):
                match = _TEMP_REMOTE.fullmatch(name)
                stem = match.group("name").removesuffix(suffix) if match else None
                if stem in malformed:
                    result.remote_leftovers_of_quarantined.append(name)
                else:
                    result.remote_leftovers.append(name)
                continue
            stem = name.removesuffix(suffix)
            if name.endswith(suffix) and stem in valid:
                continue
            base = re.sub(r"~\d+$", "", stem)
            if base in valid:
                result.duplicated.append(f"a second remote copy {name} in {directory.name}")
            elif base in malformed:
                result.fail(f"the malformed package {base!r} reached the server as {name}")
            else:
                result.fail(f"an unexpected file {name!r} on the server in {directory.name}")
    if result.remote_leftovers:
        result.fail(f"{len(result.remote_leftovers)} temporary files left on the server: "
                    f"{_few(result.remote_leftovers)}")
    if result.remote_leftovers_of_quarantined:
        result.fail(f"{len(result.remote_leftovers_of_quarantined)} temporary files of "
                    "quarantined packages left on the server: "
                    f"{_few(result.remote_leftovers_of_quarantined)}")


def _audit_local(places: Locations, valid: list[Package], malformed: list[Package],
                 result: Audit) -> None:
    archived = {name for p in valid for name in p.files}
    for name in _listing(places.uploaded):
        if name in archived:
            continue
        if name.startswith("."):
            result.local_leftovers.append(f"uploaded/{name}")
        elif re.sub(r"~\d+(\.\w+)$", r"\1", name) in archived:
            result.duplicated.append(f"a second archived copy {name}")
        else:
            result.fail(f"an unexpected file {name!r} in the archive")
    quarantined = {name for p in malformed for name in p.files if not name.startswith("secret:")}
    reports = {f"{p.stem}.error.json" for p in malformed}
    for name in _listing(places.failed):
        if name in quarantined or name in reports:
            continue
        if name.startswith("."):
            result.local_leftovers.append(f"failed/{name}")
        elif ".error" in name:
            result.notes.append(f"an extra error report {name} in failed_dir")
        else:
            result.fail(f"an unexpected file {name!r} in failed_dir")
    if result.local_leftovers:
        result.notes.append(f"{len(result.local_leftovers)} hidden temporary files in the "
                            f"archive or failed_dir: {_few(result.local_leftovers)}")


# What the engine's log says, by kind of line.
_LOG_PATTERNS = {
    "job retries logged": re.compile(r"WARNING .*retrying in"),
    "endpoint outages logged": re.compile(r"ERROR .* (is unavailable|needs attention) during"),
    "configuration errors logged": re.compile(r"ERROR .* needs attention during"),
    "unexpected errors (plugin bugs)": re.compile(r"unexpected error in"),
    "tracebacks logged by paramiko": re.compile(r"paramiko\S*: Traceback"),
    "quarantines logged": re.compile(r"quarantined in"),
    "interrupted archives finished": re.compile(r"finished (archiving after an interruption"
                                                r"|an interrupted quarantine)"),
    "re-uploads after a crash": re.compile(r"its record is not completed; uploading it again"),
}


def _read_log(path: Path, result: Audit) -> None:
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                for name, pattern in _LOG_PATTERNS.items():
                    if pattern.search(line):
                        result.log[name] += 1
                        result.log_examples.setdefault(name, line.strip())
    except OSError:
        return


def _few(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# --- the summary


@dataclass
class Summary:
    seed: int
    command: str
    events: int
    malformed: int
    faults: dict[str, tuple[int, int]]  # kind -> (injected, of which took effect)
    fault_notes: list[str]
    audit: Audit
    drain_seconds: float | None
    stop_seconds: float | None
    wall_seconds: float
    disk_method: str
    engine_starts: int
    extra_failures: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return self.extra_failures + self.audit.failures

    @property
    def lost(self) -> int:
        return len(self.audit.lost)

    @property
    def duplicated(self) -> int:
        return len(self.audit.duplicated)

    @property
    def passed(self) -> bool:
        return not self.failures and self.lost == 0 and self.duplicated == 0

    def table(self) -> str:
        a = self.audit
        rows: list[tuple[str, str]] = [
            ("seed", str(self.seed)),
            ("valid events", str(self.events)),
            ("  completed exactly once", str(a.completed)),
            ("malformed packages", str(self.malformed)),
            ("  quarantined with the right reason", str(a.quarantined)),
            ("faults injected", str(sum(n for n, _ in self.faults.values()))),
        ]
        for kind, (injected, effective) in self.faults.items():
            shown = str(injected) if injected == effective else \
                f"{injected} ({injected - effective} without effect)"
            rows.append((f"  {kind}", shown))
        rows += [
            ("engine starts", str(self.engine_starts)),
            ("retries (phase-1 re-runs, DB attempts)",
             f"{a.retries} over {a.retried_events} events"),
        ]
        rows += [(f"  {name}", str(count)) for name, count in sorted(a.log.items())]
        rows += [
            ("quarantined (error reports)", str(a.quarantined)),
            ("lost", str(self.lost)),
            ("duplicated", str(self.duplicated)),
            ("temporary files left on the server",
             str(len(a.remote_leftovers) + len(a.remote_leftovers_of_quarantined))),
            ("time to drain", "did not drain" if self.drain_seconds is None
             else f"{self.drain_seconds:.1f} s"),
            ("engine stop on SIGTERM", "had to be killed" if self.stop_seconds is None
             else f"{self.stop_seconds:.2f} s"),
            ("campaign wall time", f"{self.wall_seconds:.0f} s"),
        ]
        width = max(len(k) for k, _ in rows)
        value_width = max(len(v) for _, v in rows)
        rule = "-" * (width + value_width + 4)
        lines = [f"chaos campaign: {self.command}", rule]
        lines += [f"{k:<{width}}    {v:>{value_width}}" for k, v in rows]
        lines += [rule, f"full disk: {self.disk_method}"]
        lines += [f"note: {n}" for n in self.fault_notes + a.notes]
        for name in ("unexpected errors (plugin bugs)", "configuration errors logged"):
            if name in a.log_examples:
                lines.append(f"first of {name}: {a.log_examples[name]}")
        if self.failures or a.lost or a.duplicated:
            lines.append(f"INVARIANTS BROKEN ({len(self.failures)}):")
            lines += [f"  lost: {x}" for x in a.lost[:20]]
            lines += [f"  duplicated: {x}" for x in a.duplicated[:20]]
            lines += [f"  {x}" for x in self.failures[:40]]
            if len(self.failures) > 40:
                lines.append(f"  ... and {len(self.failures) - 40} more")
        lines.append(f"RESULT: {'PASS' if self.passed else 'FAIL'} (seed {self.seed})")
        return "\n".join(lines)
