"""The table every run prints, the results file, and the README's copy of the latest table."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

README_START = "<!-- bench:latest-table:start -->"
README_END = "<!-- bench:latest-table:end -->"


@dataclass
class Line:
    """One row of the table: a metric of the uploader against its reference."""

    row: str
    metric: str
    uploader: float | None = None
    reference: float | None = None
    unit: str = ""
    ratio: float | None = None  # how the target reads it (uploader/reference, or as noted)
    target: str = ""
    met: bool | None = None  # None: no target, or not measured
    note: str = ""
    reference_unit: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[str]:
        ref_unit = self.unit if self.reference_unit is None else self.reference_unit
        return [
            self.row,
            self.metric,
            _value(self.uploader, self.unit),
            _value(self.reference, ref_unit),
            "" if self.ratio is None else f"{self.ratio:.2f}x",
            self.target,
            {True: "yes", False: "NO", None: "-"}[self.met],
        ]


def not_available(row: str, metric: str, reason: str) -> Line:
    return Line(row=row, metric=metric, note=f"not available: {reason}")


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        text = f"{value:,}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 0.1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


HEADER = ["row", "metric", "uploader", "reference", "ratio", "target", "met?"]


def table(lines: list[Line], *, markdown: bool = False) -> str:
    rows = [HEADER] + [line.cells() for line in lines]
    notes = [(line.row, line.metric, line.note) for line in lines if line.note]
    if markdown:
        out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        out += ["| " + " | ".join(cells) + " |" for cells in rows[1:]]
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
        out = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
               for r in rows]
        out.insert(1, "-+-".join("-" * w for w in widths))
    if notes:
        out.append("")
        out += [f"- {row} {metric}: {note}" if markdown else f"  [{row}] {metric}: {note}"
                for row, metric, note in notes]
    return "\n".join(out) + "\n"


def write_results(path: Path, *, machine: dict[str, Any], options: dict[str, Any],
                  lines: list[Line], details: dict[str, Any], started: str,
                  duration: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "started": started,
        "duration_seconds": round(duration, 1),
        "machine": machine,
        "options": options,
        "rows": [asdict(line) for line in lines],
        "table": table(lines),
        "details": details,
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def update_readme(readme: Path, lines: list[Line], *, machine: dict[str, Any],
                  results_file: str, started: str) -> bool:
    """Replace the table between the markers of README.md's Benchmarks section; False if
    the markers are missing (the rest of the README is never touched)."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        return False
    memory = machine.get("memory_bytes") or 0
    load = machine.get("load_average") or [None]
    load_text = f", load average {load[0]:.1f} at the start" if load[0] is not None else ""
    described = (f"{machine.get('cpu_model')}, {machine.get('cores')} cores, "
                 f"{memory / 2**30:.0f} GiB{load_text}; Python {machine.get('python')}, "
                 f"paramiko {machine.get('paramiko')}, psycopg {machine.get('psycopg')}, "
                 f"{machine.get('openssh')}")
    block = (f"{README_START}\n"
             f"Latest full run: {started} on {described} (`{results_file}`).\n\n"
             f"{table(lines, markdown=True)}{README_END}")
    readme.write_text(pattern.sub(lambda _: block, text, count=1))
    return True


def load_results(path: Path) -> tuple[list[Line], dict[str, Any], str]:
    """The lines, machine and start time of a results file written by :func:`write_results`."""
    data = json.loads(path.read_text())
    lines = [Line(**row) for row in data["rows"]]
    return lines, data["machine"], data["started"]
