"""The ``uploader`` command: ``run``, ``init-db``, ``check``, ``status``, ``tui`` and ``demo``.

Exit codes: 0 success; 1 the work could not be completed (a job left for retry, an endpoint
unreachable, a check failed); 2 the configuration is wrong. ``status`` adds 3: the engine is
not running (see :mod:`uploader_core.status`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import cpu, logs, signals, status
from .config import apply_environment, load_file
from .control import ControlServer
from .control_client import ControlConnection, ControlError, EngineNotRunning, PermissionDenied
from .control_protocol import socket_path
from .engine import DataUploader
from .errors import ConfigurationError, TransientError, UploaderError
from .job import Outcome
from .metrics import Metrics

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

    def attach(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        where = p.add_mutually_exclusive_group()
        where.add_argument("-c", "--config", metavar="FILE",
                           help="the engine's configuration file (finds its control socket)")
        where.add_argument("--socket", metavar="PATH", help="the engine's control socket")
        return p

    state = attach("status", "show what the running engine is doing; exit 0 healthy, "
                   "1 unhealthy, 3 not running")
    state.add_argument("--json", action="store_true", help="the whole snapshot as JSON")
    attach("tui", "attach the terminal user interface to the running engine")
    demo = sub.add_parser("demo", help="run the whole system on throwaway local servers",
                          description="start a throwaway PostgreSQL and SFTP server, generate "
                                      "events, upload them and show it all in the TUI")
    demo.add_argument("--headless", action="store_true",
                      help="no TUI: run, then print a summary")
    demo.add_argument("--seconds", type=float, metavar="N",
                      help="stop after N seconds (default: run until Ctrl-C or q)")
    return parser


def _engine(args: argparse.Namespace) -> DataUploader:
    config = apply_environment(load_file(args.config), os.environ)
    section = config.get("uploader")
    level = args.log_level or (section.get("log_level") if isinstance(section, dict) else None)
    logs.setup(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")
    def reread() -> dict[str, Any]:
        return apply_environment(load_file(args.config), os.environ)

    return DataUploader(config, reload_config=reread)


def _serve(engine: DataUploader) -> int:
    server = None
    try:
        engine.claim_queue()  # before the socket: the queue is what must not be shared
    except BaseException:
        engine.close()
        raise
    if engine.settings["control"]["enabled"]:
        try:
            server = ControlServer.for_engine(engine)
            server.start()
        except BaseException:
            engine.close()
            raise
    metrics = Metrics.for_engine(engine)
    try:
        metrics.start()
        engine.run(handle_signals=False)
    finally:
        metrics.close()
        if server is not None:
            server.close()
    return EXIT_OK


def _run(engine: DataUploader, once: bool) -> int:
    cpu.apply(engine.settings["cpu_affinity"])
    if not once:
        # Before anything shows that the service is up (the queue's lock, the socket): a
        # SIGHUP or SIGTERM from then on is a reload or a stop, never the default kill.
        restore = signals.install(engine.request_stop, engine.request_reload)
        try:
            return _serve(engine)
        finally:
            restore()
    metrics = Metrics.for_engine(engine)
    with engine:
        metrics.start()
        try:
            results = engine.run_once()
        finally:
            metrics.close()
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


def _socket_of(args: argparse.Namespace) -> tuple[Path, str]:
    """The control socket the arguments name, and how to start its engine."""
    if args.socket:
        return Path(args.socket), "start it with: uploader run -c FILE"
    if args.config:
        section = apply_environment(load_file(args.config), os.environ).get("uploader")
        return (socket_path(section if isinstance(section, dict) else None),
                f"start it with: uploader run -c {args.config}")
    return socket_path(None), "start it with: uploader run -c FILE (or give -c FILE here)"


def _status(args: argparse.Namespace) -> int:
    path, hint = _socket_of(args)
    try:
        with ControlConnection(path, hint=hint) as connection:
            snapshot = connection.request("snapshot")
    except EngineNotRunning as exc:
        if args.json:
            print(json.dumps({"state": "not running", "error": str(exc)}))
        _say(exc)
        return status.EXIT_NOT_RUNNING
    except PermissionDenied as exc:
        _say(exc)
        return EXIT_CONFIG
    except ControlError as exc:
        _say(exc)
        return status.EXIT_UNHEALTHY
    print(json.dumps(snapshot, indent=2) if args.json else status.render(snapshot))
    return status.exit_code(snapshot)


def _tui(args: argparse.Namespace) -> int:
    path, hint = _socket_of(args)
    try:
        from uploader_tui.app import UploaderApp
    except ImportError as exc:
        _say(f"the TUI needs the 'tui' extra ({exc}); install it with "
             "pip install 'edge-uploader[tui]'")
        return EXIT_CONFIG
    UploaderApp(path, start_hint=hint, exit_on_signals=True).run()
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    try:
        from uploader_demo.runner import run_demo
    except ImportError as exc:
        _say(f"the demo needs the 'tui' extra ({exc}); install it with "
             "pip install 'edge-uploader[tui]'")
        return EXIT_CONFIG
    code: int = run_demo(headless=args.headless, seconds=args.seconds)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup(getattr(args, "log_level", None) or "INFO")
    try:
        if args.command == "status":
            return _status(args)
        if args.command == "tui":
            return _tui(args)
        if args.command == "demo":
            return _demo(args)
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
