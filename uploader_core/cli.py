"""The ``uploader`` command: ``run``, ``init-db`` and ``check``.

Exit codes: 0 success; 1 the work could not be completed (a job left for retry, an endpoint
unreachable, a check failed); 2 the configuration is wrong.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from . import logs
from .config import load_file
from .engine import DataUploader
from .errors import ConfigurationError, TransientError, UploaderError
from .job import Outcome

EXIT_OK, EXIT_INCOMPLETE, EXIT_CONFIG = 0, 1, 2

log = logging.getLogger("uploader")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uploader", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-c", "--config", required=True, metavar="FILE",
                       help="YAML configuration file")
        p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                       help="overrides uploader.log_level")
        return p

    run = add("run", "upload event packages: the service loop, or one pass with --once")
    run.add_argument("--once", action="store_true",
                     help="one pass; exit 0 if every eligible job completed, 1 if any is "
                          "left for retry")
    add("init-db", "create the events table (safe to run again)")
    add("check", "try both endpoints and report one line per item")
    return parser


def _engine(args: argparse.Namespace) -> DataUploader:
    config = load_file(args.config)
    section = config.get("uploader")
    level = args.log_level or (section.get("log_level") if isinstance(section, dict) else None)
    logs.setup(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")
    return DataUploader(config)


def _run(engine: DataUploader, once: bool) -> int:
    if not once:
        engine.run()
        return EXIT_OK
    with engine:
        results = engine.run_once()
    left = [r for r in results if r.outcome is Outcome.RETRY]
    done = sum(r.outcome is Outcome.COMPLETED for r in results)
    quarantined = sum(r.outcome is Outcome.QUARANTINED for r in results)
    waiting = sum(r.outcome is Outcome.WAITING for r in results)
    log.info("pass done: %d completed, %d quarantined, %d left for retry, %d not ready",
             done, quarantined, len(left), waiting)
    return EXIT_INCOMPLETE if left else EXIT_OK


def _check(engine: DataUploader) -> int:
    with engine:
        results = engine.check()
    width = max((len(r.name) for r in results), default=0)
    for r in results:
        print(f"{'PASS' if r.ok else 'FAIL'}  {r.name:<{width}}  {r.detail}")
    return EXIT_OK if results and all(r.ok for r in results) else EXIT_INCOMPLETE


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup(args.log_level or "INFO")
    try:
        engine = _engine(args)
        if args.command == "run":
            return _run(engine, args.once)
        if args.command == "init-db":
            with engine:
                engine.init_storage()
            print("the events table is ready")
            return EXIT_OK
        return _check(engine)
    except ConfigurationError as exc:
        _say(exc)
        return EXIT_CONFIG
    except TransientError as exc:
        _say(exc)
        return EXIT_INCOMPLETE
    except UploaderError as exc:
        _say(exc)
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        return 130


def _say(exc: Any) -> None:
    print(f"uploader: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
