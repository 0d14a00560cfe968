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

from hook_actions import AfterHook

from uploader_core import DataUploader, logs
from uploader_core.config import load_file


def kill_self() -> None:
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--kill-after", default=None)
    parser.add_argument("--loop", action="store_true")
    args = parser.parse_args()
    logs.setup("INFO")
    plugins = [("killer", AfterHook(args.kill_after, kill_self))] if args.kill_after else []
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
