"""A short chaos campaign in the test suite: every fault kind, every malformed kind, a strict audit.

It takes about a minute, once with one worker and once with three. The seed is fixed so that
a failure reproduces with ``scripts/chaos --seed ... --events ... [--workers 3]`` (printed with
the summary); set ``UPLOADER_CHAOS_SEED`` to run another one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from servers import PostgresServer, SftpServer

from chaos.campaign import Options, run_campaign
from chaos.faults import KINDS

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SEED = int(os.environ.get("UPLOADER_CHAOS_SEED", "20261128"))


# With several workers, faults also land while one worker's job is mid-transfer and another's
# is being recorded or completed, and a worker's next job may already be opened on the server.
@pytest.mark.parametrize("workers", [1, 3])
def test_short_campaign_loses_and_duplicates_nothing(
    postgres_server: PostgresServer, sftp_server: SftpServer, tmp_path: Path, workers: int
) -> None:
    started = time.monotonic()
    options = Options(seed=SEED, events=80, faults=16, window=40, drain_timeout=60,
                      workers=workers)
    summary = run_campaign(options, postgres_server, sftp_server, tmp_path)
    print(f"\n{summary.table()}\n(campaign test took {time.monotonic() - started:.0f} s)")

    assert summary.lost == 0, summary.audit.lost
    assert summary.duplicated == 0, summary.audit.duplicated
    assert summary.failures == [], "\n".join(summary.failures)
    assert summary.audit.completed == summary.events
    assert summary.audit.quarantined == summary.malformed
    assert set(KINDS) <= set(summary.faults), f"not injected: {set(KINDS) - set(summary.faults)}"
    for kind, (injected, effective) in summary.faults.items():
        if kind.endswith("_cut") or (kind == "disk_full" and "not available" in
                                     summary.disk_method):
            continue  # a cut needs traffic to reach its offset; a full disk needs a way
        assert effective == injected, f"{kind}: only {effective} of {injected} took effect"
    # Whatever the campaign did to them, the servers are up for the tests that follow.
    assert postgres_server.is_running() and sftp_server.is_running()
