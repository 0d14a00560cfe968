"""A test plugin that runs an action right after a chosen phase hook has returned."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from uploader_core import hookimpl


class AfterHook:
    """Calls ``action()`` once, after every other implementation of ``hook`` returned."""

    def __init__(self, hook: str, action: Callable[[], None]) -> None:
        self.hook = hook
        self.action = action
        self.fired = False

    def _after(self, hook: str) -> None:
        if hook == self.hook and not self.fired:
            self.fired = True
            self.action()

    @hookimpl(wrapper=True)
    def store_metadata(self, job: Any) -> Generator[None, Any, Any]:
        result = yield
        self._after("store_metadata")
        return result

    @hookimpl(wrapper=True)
    def transfer_files(self, job: Any, progress: Any) -> Generator[None, Any, Any]:
        result = yield
        self._after("transfer_files")
        return result

    @hookimpl(wrapper=True)
    def mark_completed(self, job: Any, receipts: Any) -> Generator[None, Any, Any]:
        result = yield
        self._after("mark_completed")
        return result
