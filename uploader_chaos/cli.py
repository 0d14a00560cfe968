"""Fault injection on the command line: ``python -m uploader_chaos proxy``.

``proxy`` forwards ``--listen`` to ``--upstream`` until Ctrl-C (or SIGTERM), printing one line
per connection event, and reads commands from stdin to change the faults while it runs:

    pass                               forward normally (lifts every fault)
    stall                              forward nothing, close nothing: a silent dead link
    refuse                             reset new connections (the server is down)
    cut                                reset every open connection now
    cut-bytes N [DIRECTION] [repeat]   reset after N more bytes (upstream, downstream, both)
    cut-seconds S                      reset every open connection in S seconds
    throttle BPS                       limit each direction to BPS bytes per second
    latency S                          delay every chunk by S seconds
    stats                              print the counters
    help                               print this list
    quit                               stop the proxy

Example: put it between the uploader and PostgreSQL, then type ``stall``, wait, type ``pass``:

    python -m uploader_chaos proxy --listen 127.0.0.1:15432 --upstream 127.0.0.1:5432
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import TextIO

from .proxy import DIRECTIONS, UPSTREAM, FaultProxy

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

COMMANDS = __doc__.split("stdin to change the faults while it runs:\n\n", 1)[1].split("\n\n")[0]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as ``(host, port)``."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port_text)


def _non_negative(kind: Callable[[str], float]) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from error
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
        return value
    return convert


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uploader-faults",
                                     description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    proxy = sub.add_parser("proxy", help="a TCP fault proxy in front of one server",
                           description=__doc__.split("\n\n", 1)[1],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    proxy.add_argument("--listen", required=True, type=parse_address, metavar="HOST:PORT",
                       help="where clients connect (port 0 picks a free one)")
    proxy.add_argument("--upstream", required=True, type=parse_address, metavar="HOST:PORT",
                       help="the real server")
    proxy.add_argument("--mode", choices=("pass", "stall", "refuse"), default="pass",
                       help="the link at start (default: pass)")
    proxy.add_argument("--cut-after-bytes", type=_non_negative(int), metavar="N",
                       help="reset every connection after N bytes")
    proxy.add_argument("--cut-direction", choices=DIRECTIONS, default=UPSTREAM,
                       help="which bytes --cut-after-bytes counts (default: upstream)")
    proxy.add_argument("--cut-repeat", action="store_true",
                       help="re-arm --cut-after-bytes after each cut (a cut every N bytes)")
    proxy.add_argument("--cut-after-seconds", type=_non_negative(float), metavar="S",
                       help="reset every open connection S seconds after start")
    proxy.add_argument("--throttle", type=_non_negative(float), metavar="BPS",
                       help="limit each direction to BPS bytes per second")
    proxy.add_argument("--latency", type=_non_negative(float), metavar="S",
                       help="delay every forwarded chunk by S seconds")
    proxy.add_argument("--no-stdin", action="store_true",
                       help="do not read commands from stdin")
    return parser


def apply_command(proxy: FaultProxy, line: str) -> str | None:
    """Carry out one stdin command; the reply to print, or ``None`` for ``quit``."""
    words = line.split()
    if not words:
        return ""
    name, arguments = words[0].lower(), words[1:]
    try:
        if name in ("quit", "exit"):
            return None
        if name == "help":
            return COMMANDS
        if name == "stats":
            stats = proxy.stats()
            return " ".join(f"{key}={value}" for key, value in vars(stats).items())
        if name in ("pass", "stall", "refuse", "cut") and not arguments:
            {"pass": proxy.pass_through, "stall": proxy.stall, "refuse": proxy.refuse,
             "cut": proxy.cut_now}[name]()
        elif name == "cut-bytes" and 1 <= len(arguments) <= 3:
            repeat = arguments[-1].lower() == "repeat"
            rest = arguments[:-1] if repeat else arguments
            direction = rest[1].lower() if len(rest) == 2 else UPSTREAM
            proxy.cut_after_bytes(int(rest[0]), direction, repeat=repeat)
        elif name == "cut-seconds" and len(arguments) == 1:
            proxy.cut_after_seconds(float(arguments[0]))
        elif name == "throttle" and len(arguments) == 1:
            proxy.throttle(float(arguments[0]))
        elif name == "latency" and len(arguments) == 1:
            proxy.latency(float(arguments[0]))
        else:
            return f"unknown command {line.strip()!r}; type help"
    except (ValueError, IndexError) as error:
        return f"error: {error}"
    return f"ok: {proxy.state}"


def _read_commands(proxy: FaultProxy, lines: Iterable[str], out: TextIO) -> bool:
    """Apply commands until ``quit`` (returns True) or the end of input (returns False)."""
    for line in lines:
        reply = apply_command(proxy, line)
        if reply is None:
            return True
        if reply:
            print(reply, file=out, flush=True)
    return False


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = sys.stdout
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("uploader_chaos")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)

    (listen_host, listen_port), (upstream_host, upstream_port) = args.listen, args.upstream
    proxy = FaultProxy(upstream_host, upstream_port, listen_host=listen_host,
                       listen_port=listen_port)
    try:
        proxy.start()
    except OSError as error:
        print(f"cannot listen on {listen_host}:{listen_port}: {error.strerror or error}",
              file=sys.stderr)
        logger.removeHandler(handler)
        return EXIT_ERROR
    try:
        if args.mode == "stall":
            proxy.stall()
        elif args.mode == "refuse":
            proxy.refuse()
        if args.cut_after_bytes is not None:
            proxy.cut_after_bytes(args.cut_after_bytes, args.cut_direction,
                                  repeat=args.cut_repeat)
        if args.cut_after_seconds is not None:
            proxy.cut_after_seconds(args.cut_after_seconds)
        if args.throttle:
            proxy.throttle(args.throttle)
        if args.latency:
            proxy.latency(args.latency)
        print(f"listening on {listen_host}:{proxy.port}, upstream {upstream_host}:"
              f"{upstream_port}, {proxy.state}; type help for commands", file=out, flush=True)
        if args.no_stdin or not _read_commands(proxy, sys.stdin, out):
            while True:  # stdin closed: run until Ctrl-C or SIGTERM
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        proxy.close()
        stats = proxy.stats()
        print("stopped: " + " ".join(f"{key}={value}" for key, value in vars(stats).items()),
              file=out, flush=True)
        logger.removeHandler(handler)
    return EXIT_OK
