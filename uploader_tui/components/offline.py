"""What the screen says while no engine answers: why, and how to start one."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class OfflineNotice(Static):
    def __init__(self) -> None:
        super().__init__(id="offline")
        self.display = False

    def show(self, reason: str, not_running: bool) -> None:
        title = "The uploader engine is not running." if not_running else \
            "Not attached to the uploader engine."
        self.update(Text.assemble((title, "bold"), "\n", reason, "\n",
                                  ("Reconnecting by itself as soon as it answers.", "dim")))
        self.display = True

    def hide(self) -> None:
        self.display = False
