"""The two lines at the top: engine state and endpoint health; the current transfer."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import ProgressBar, Static

from uploader_core.status import human_bytes, human_duration

STATE_STYLES = {"running": "bold green", "idle": "green", "starting": "yellow",
                "paused": "bold yellow", "stopping": "bold red", "stopped": "bold red",
                "not running": "bold red", "connecting": "yellow"}


class EngineHeader(Vertical):
    status_line: Static
    transfer_label: Static
    transfer_bar: ProgressBar
    transfer_rate: Static

    def __init__(self) -> None:
        super().__init__(id="header")
        self.state = "connecting"
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.counts = (0, 0)
        self._shown = Text()

    def compose(self) -> ComposeResult:
        # Kept rather than queried: updates may still arrive while the app is shutting down
        # and its widgets are already gone.
        self.status_line = Static(id="status-line")
        self.transfer_label = Static(id="transfer-label")
        self.transfer_bar = ProgressBar(total=100, show_eta=False, id="transfer-bar")
        self.transfer_rate = Static(id="transfer-rate")
        yield self.status_line
        with Horizontal(id="transfer-line"):
            yield self.transfer_label
            yield self.transfer_bar
            yield self.transfer_rate

    def on_mount(self) -> None:
        self.show_status()
        self.show_transfer(None)

    def show_status(self, state: str | None = None,
                    endpoints: dict[str, dict[str, Any]] | None = None,
                    counts: tuple[int, int] | None = None) -> None:
        if state is not None:
            self.state = state
        if endpoints is not None:
            self.endpoints = endpoints
        if counts is not None:
            self.counts = counts
        line = Text.assemble(("● ", STATE_STYLES.get(self.state, "")),
                             (self.state, STATE_STYLES.get(self.state, "")))
        if self.state not in ("not running", "connecting"):
            line.append("  │ ")
            if not self.endpoints:
                line.append("endpoints ", "dim").append("no failure seen", "green")
            for name, health in sorted(self.endpoints.items()):
                up = bool(health.get("up"))
                line.append(f" {name} ").append("✔ " if up else "✘ ",
                                                  "green" if up else "bold red")
            pending, failed = self.counts
            line.append("  │ ").append(f"pending {pending}").append("  ")
            line.append(f"failed {failed}", "red" if failed else "")
        if line != self._shown:  # unchanged most of the time: skip the repaint
            self._shown = line
            self.status_line.update(line)

    def show_transfer(self, transfer: dict[str, Any] | None) -> None:
        label, bar, rate = self.transfer_label, self.transfer_bar, self.transfer_rate
        if not transfer:
            label.update(Text("no transfer in progress", "dim"))
            bar.display = False
            rate.update("")
            return
        total = max(int(transfer.get("total") or 0), 1)
        done = min(int(transfer.get("done") or 0), total)
        label.update(Text(f"⇪ {transfer.get('event_id')}", no_wrap=True, overflow="ellipsis"))
        bar.display = True
        bar.update(total=total, progress=done)
        rate.update(Text(f"{human_bytes(transfer.get('rate') or 0)}/s  "
                         f"ETA {human_duration(transfer.get('eta'))}", no_wrap=True))
