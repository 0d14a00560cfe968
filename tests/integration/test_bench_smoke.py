"""The benchmark harness (``bench/``) runs end to end at its quick sizes.

Nothing here looks at a timing: a loaded machine must not fail the suite. What is checked is
that every row ran against the real servers, printed its line and landed in the results file
with the machine's description.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_quick_run_prints_the_table_and_writes_the_results(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--results-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "row | metric" in result.stdout
    files = list(tmp_path.glob("*-quick.json"))
    assert len(files) == 1, files
    data = json.loads(files[0].read_text())

    rows = data["rows"]
    assert {line["row"] for line in rows} == {"1", "2", "3", "4", "5", "6", "7"}
    assert not [line for line in rows if line["note"].startswith("FAILED")]
    measured = [line for line in rows if not line["note"].startswith("not available")]
    # Row 7 may wait for its option; rows 1 to 6 always measure something.
    assert {line["row"] for line in measured} >= {"1", "2", "3", "4", "5", "6"}
    for line in measured:
        assert line["uploader"] is not None and line["uploader"] > 0, line
    # Row 2 runs the engine as the service does, its threads on one CPU, and beside that
    # with them left to the kernel (uploader.cpu_affinity: inherited).
    [spread] = [line for line in measured if line["metric"].endswith("threads on any CPU")]
    assert spread["reference"] > 0
    ours, spread_runs = (data["details"]["2"][key]
                         for key in ("uploader", "cpu_affinity_inherited"))
    allowed = sorted(os.sched_getaffinity(0))
    for run in ours:
        assert len(run["cpus"]) == 1 and run["cpus"][0] in allowed, (run["cpus"], allowed)
    assert all(run["cpus"] == allowed for run in spread_runs), spread_runs
    # The ssh client of transport openssh is found and measured beside the uploader.
    [piped_rss] = [line for line in rows if line["row"] == "4" and "openssh" in line["metric"]]
    assert piped_rss["extra"]["ssh_client_mb"] > 0
    if any(line["row"] == "7" for line in measured):
        # Row 7 also runs its worker counts over a link with a round-trip time.
        assert any("round trip" in line["metric"] for line in measured if line["row"] == "7")
        # And the same events dealt out to engine processes of their own, beside the floor.
        split = [line for line in measured if "one process each" in line["metric"]]
        assert [line["metric"] for line in split] == [
            f"row 2 time, {n} engines of 1 worker, one process each" for n in (2, 4)]
        assert all(line["reference"] > 0 for line in split), split
        # Each process holds an interpreter of its own: together they take more memory than
        # one process with as many workers.
        assert all(line["extra"]["processes_mb"] > line["extra"]["one_process_mb"] > 0
                   for line in split), split

    machine = data["machine"]
    assert machine["cores"] >= 1
    for key in ("cpu_model", "memory_bytes", "python", "paramiko", "psycopg", "openssh"):
        assert machine[key], key
    assert data["options"]["quick"] is True
