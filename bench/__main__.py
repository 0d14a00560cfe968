"""``python -m bench`` (or ``./bench/run``): run the benchmark rows and print the table.

Examples::

    ./bench/run                      # every row at full size (several minutes)
    ./bench/run --quick              # every row, small sizes: a smoke run of the harness
    ./bench/run --rows 1,2           # only rows 1 and 2
    ./bench/run --profile            # also profile the uploader (py-spy) where a target is missed
    ./bench/run --update-readme      # copy the table into README.md's Benchmarks section
    ./bench/run --update-readme-from bench/results/<timestamp>.json   # same, from a saved run

Results go to ``bench/results/<timestamp>.json`` (``--results-dir`` to change) together with
a description of the machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from .env import ROOT, Bench, machine
from .measure import py_spy
from .report import Line, load_results, table, update_readme, write_results
from .rows import ROWS, Context, Scale


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench", description="Benchmark the uploader against real PostgreSQL and sshd.")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and counts: seconds instead of minutes")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated rows to run, of {','.join(ROWS)} (default: all)")
    parser.add_argument("--profile", action="store_true",
                        help="profile the uploader with py-spy where a target is missed")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results",
                        help="where the results JSON (and profiles) go")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where local packages are written (default: the system temp dir)")
    parser.add_argument("--update-readme", action="store_true",
                        help="replace the table in README.md's Benchmarks section")
    parser.add_argument("--update-readme-from", type=Path, metavar="RESULTS_JSON",
                        help="only copy the table of an earlier run into README.md")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; rows are {', '.join(ROWS)}")
    args.row_list = rows
    if args.profile and py_spy() is None:
        parser.error("--profile needs py-spy: .venv/bin/pip install -e '.[bench]'")
    return args


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the servers started here are stopped on the way out."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.update_readme_from:
        saved, description, started_text = load_results(args.update_readme_from)
        if not update_readme(ROOT / "README.md", saved, machine=description,
                             results_file=_relative(args.update_readme_from),
                             started=started_text):
            print("README.md has no Benchmarks table markers; not updated", file=sys.stderr)
            return 1
        print("README.md: Benchmarks table updated")
        return 0
    _exit_on_sigterm()
    scale = Scale.quick() if args.quick else Scale()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    started_text = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    started = time.monotonic()
    lines: list[Line] = []
    details: dict[str, object] = {}
    failed = False
    say(f"starting PostgreSQL and sshd ({'quick' if args.quick else 'full'} run, rows "
        f"{','.join(args.row_list)})")
    with Bench(args.workdir) as bench:
        description = machine(bench)
        ctx = Context(bench=bench, scale=scale, stamp=stamp, say=say,
                      profile_dir=args.results_dir if args.profile else None)
        if args.profile:
            args.results_dir.mkdir(parents=True, exist_ok=True)
        for row in args.row_list:
            title, function = ROWS[row]
            say(f"row {row}: {title}")
            row_started = time.monotonic()
            try:
                result = function(ctx)
            except Exception as exc:
                failed = True
                say(traceback.format_exc())
                lines.append(Line(row, title, note=f"FAILED: {type(exc).__name__}: "
                                                   f"{str(exc).splitlines()[0][:200]}"))
                details[row] = {"error": traceback.format_exc()}
                continue
            lines.extend(result.lines)
            details[row] = {**result.details,
                            "seconds": round(time.monotonic() - row_started, 1)}
            say(f"  done in {time.monotonic() - row_started:.0f} s")
        if ctx.profiles:
            details["profiles"] = ctx.profiles
        details["load_average_at_end"] = os.getloadavg()
    duration = time.monotonic() - started
    results_file = args.results_dir / f"{stamp}{'-quick' if args.quick else ''}.json"
    options = {"quick": args.quick, "rows": args.row_list, "scale": scale.__dict__,
               "profile": args.profile}
    write_results(results_file, machine=description, options=options, lines=lines,
                  details=details, started=started_text, duration=duration)
    print(table(lines), end="")
    print(f"\nresults: {_relative(results_file)} ({duration:.0f} s)")
    for name, path in ctx.profiles.items():
        print(f"profile {name}: {_relative(Path(path))}")
    if args.update_readme:
        if update_readme(ROOT / "README.md", lines, machine=description,
                         results_file=_relative(results_file), started=started_text):
            print("README.md: Benchmarks table updated")
        else:
            print("README.md has no Benchmarks table markers; not updated", file=sys.stderr)
    return 1 if failed else 0


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
