"""Runs a real engine in its own process, optionally killing itself at a chosen point.

    python engine_driver.py CONFIG.yaml [--kill-after HOOK] [--loop]

``--kill-after store_metadata`` sends SIGKILL to this process right after that hook returned
(no cleanup, no finally blocks: exactly what a power cut does to the engine's own state).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Generator
from typing import Any

from uploader_core import DataUploader, hookimpl, logs
from uploader_core.config import load_file


class KillAfter:
    def __init__(self, hook: str) -> None:
        self.hook = hook

    def _maybe_die(self, hook: str) -> None:
        if hook == self.hook:
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    @hookimpl(wrapper=True)
    def store_metadata(self, job: Any) -> Generator[None, Any, Any]:
        result = yield
        self._maybe_die("store_metadata")
        return result

    @hookimpl(wrapper=True)
    def transfer_files(self, job: Any, progress: Any) -> Generator[None, Any, Any]:
        result = yield
        self._maybe_die("transfer_files")
        return result

    @hookimpl(wrapper=True)
    def mark_completed(self, job: Any, receipts: Any) -> Generator[None, Any, Any]:
        result = yield
        self._maybe_die("mark_completed")
        return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--kill-after", default=None)
    parser.add_argument("--loop", action="store_true")
    args = parser.parse_args()
    logs.setup("INFO")
    plugins = [("killer", KillAfter(args.kill_after))] if args.kill_after else []
    engine = DataUploader(load_file(args.config), plugins=plugins)
    if args.loop:
        engine.run()
        return 0
    with engine:
        results = engine.run_once()
    print(" ".join(f"{r.event_id}={r.outcome.value}" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
