"""One event in full: where its files are, its attempts and errors, and its metadata."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from uploader_core.status import clock, human_bytes

LOCATIONS = {"pending": "waiting in the pending directory",
             "failed": "quarantined in the failed directory",
             "uploaded": "uploaded and archived", None: "no files found"}


def describe(detail: dict[str, Any]) -> Text:
    text = Text()

    def row(key: str, value: str, style: str = "") -> None:
        text.append(f"{key:<12}", "bold").append(value, style).append("\n")

    row("event", str(detail.get("event_id")))
    row("files", LOCATIONS.get(detail.get("location"), str(detail.get("location"))))
    pending = detail.get("pending")
    if pending:
        row("size", human_bytes(float(pending.get("size", 0))))
        row("since", clock(float(pending.get("since", 0))))
    row("attempts", str(detail.get("attempts", 0)))
    if detail.get("last_error"):
        row("last error", str(detail["last_error"]), "red")
    quarantined = detail.get("quarantined") or {}
    if quarantined:
        row("failed", f"{quarantined.get('phase')}: {quarantined.get('reason')}", "red")
    text.append("\nHistory\n", "bold underline")
    history = detail.get("history") or []
    if not history:
        text.append("  nothing happened to it since the engine started\n", "dim")
    for entry in history:
        line = f"  {clock(float(entry.get('time', 0)))} {entry.get('outcome', '')}"
        if entry.get("phase"):
            line += f" in {entry['phase']}"
        if entry.get("reason"):
            line += f": {entry['reason']}"
        text.append(line + "\n", "red" if entry.get("outcome") != "completed" else "green")
    report = detail.get("error_report")
    if report:
        text.append("\nError report\n", "bold underline")
        text.append(json.dumps(report, indent=2) + "\n")
    text.append("\nMetadata\n", "bold underline")
    if detail.get("metadata") is not None:
        text.append(json.dumps(detail["metadata"], indent=2))
    else:
        text.append(str(detail.get("metadata_error") or "not available"), "dim")
    return text


class DetailScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("q", "app.pop_screen", "Back", show=False),
    ]

    def __init__(self, detail: dict[str, Any]) -> None:
        super().__init__()
        self.detail = detail

    def compose(self) -> ComposeResult:
        yield Static(Text(f"Event {self.detail.get('event_id')}", "bold"), id="detail-title")
        with VerticalScroll(id="detail-body"):
            yield Static(describe(self.detail), id="detail-text")
        yield Footer()

