"""Snapshot and event data turned into what the tables show: plain values, no widgets.

Every row is keyed by its event id, so the tables can be updated in place: a pass that
changes three of 10,000 pending jobs changes three rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rich.text import Text

from uploader_core.status import clock, human_bytes, human_duration

PHASE_WORDS = {
    "pre_upload": "starting",
    "store_metadata": "recording",
    "transfer": "uploading",
    "mark_completed": "completing",
    "archive": "archiving",
}


class Stamp(Text):
    """A time cell that sorts by its timestamp."""

    def __init__(self, timestamp: float) -> None:
        super().__init__(clock(timestamp), no_wrap=True)
        self.timestamp = timestamp


Cells = tuple[Text, ...]


def cell(value: str, style: str = "") -> Text:
    # Always Text: a plain str cell would be parsed as markup, and reasons contain brackets.
    return Text(value, style=style, no_wrap=True, overflow="ellipsis")


@dataclass
class PendingJob:
    event_id: str
    size: int
    since: float
    attempts: int = 0
    last_error: str | None = None
    activity: str | None = None  # what the engine is doing with it right now

    @classmethod
    def from_snapshot(cls, item: dict[str, Any], now: float) -> PendingJob:
        # Rounded: "time - age" of two snapshots differs in the last bits, and an unchanged
        # job must compare equal so that its row is left alone.
        return cls(event_id=str(item["event_id"]), size=int(item.get("size", 0)),
                   since=round(now - float(item.get("age", 0)), 3),
                   attempts=int(item.get("attempts", 0)), last_error=item.get("last_error"))

    def cells(self) -> Cells:
        if self.activity:
            status = cell(self.activity, "bold")
        elif self.last_error:
            status = cell(f"retry: {self.last_error}", "red")
        else:
            status = cell("waiting", "dim")
        return (cell(self.event_id), cell(human_bytes(self.size)), Stamp(self.since),
                cell(str(self.attempts) if self.attempts else ""), status)


def uploading(transfer: dict[str, Any]) -> str:
    """A pending row's status while it is on the wire (a progress event or a snapshot's)."""
    total = max(int(transfer.get("total") or 0), 1)
    return f"uploading {100 * int(transfer.get('done') or 0) // total}%"


def pending_jobs(snapshot: dict[str, Any]) -> dict[str, PendingJob]:
    now = float(snapshot.get("time", 0))
    jobs = (PendingJob.from_snapshot(item, now) for item in snapshot.get("pending") or ())
    return {job.event_id: job for job in jobs}


def uploaded_cells(item: dict[str, Any]) -> Cells:
    return (cell(str(item["event_id"])), cell(human_bytes(float(item.get("bytes", 0)))),
            Stamp(float(item.get("time", 0))), cell(human_duration(item.get("duration"))))


def failed_cells(item: dict[str, Any]) -> Cells:
    # The reason wraps: it is what a technician came to read, and 80 columns cut it short.
    reason = Text(str(item.get("reason", "")), style="red", overflow="fold")
    return (cell(str(item["event_id"])), Stamp(float(item.get("time", 0))), reason)


def keyed(items: Iterable[dict[str, Any]], make: Any) -> dict[str, Cells]:
    return {str(item["event_id"]): make(item) for item in items}


def log_line(event: dict[str, Any]) -> str | None:
    """The Log view's line for an event, or None for the events it does not show."""
    kind = event.get("kind")
    when = clock(float(event.get("time", 0)))
    event_id = event.get("event_id")
    if kind == "retry":
        return f"{when} RETRY   {event_id} ({event.get('phase')}): {event.get('reason')}"
    if kind == "quarantined":
        return f"{when} FAILED  {event_id} ({event.get('phase')}): {event.get('reason')}"
    if kind == "endpoint":
        if event.get("up"):
            return f"{when} UP      {event.get('endpoint')} is reachable again"
        return f"{when} DOWN    {event.get('endpoint')}: {event.get('reason')}"
    if kind == "requeued":
        return f"{when} REQUEUE {event_id} moved back to pending"
    if kind == "state" and event.get("state") in ("paused", "stopping", "stopped"):
        return f"{when} ENGINE  {event.get('state')}"
    return None


def history_lines(snapshot: dict[str, Any], limit: int = 50) -> list[str]:
    """What went wrong before the TUI attached: the Log view starts with it."""
    failed = sorted(snapshot.get("quarantined") or (), key=lambda q: q.get("time", 0))
    lines = [log_line({"kind": "quarantined", **item}) for item in failed[-limit:]]
    for job in snapshot.get("pending") or ():
        if job.get("last_error"):
            lines.append(f"{'':8} RETRY   {job['event_id']} (tried {job.get('attempts', 0)}x): "
                         f"{job['last_error']}")
    return [line for line in lines if line is not None][-limit:]
