"""Each server stopped or killed at each phase, and the engine killed between phases.

After every fault the queue is drained again and every event must be completed exactly once:
one row, byte-identical remote files, local files archived, nothing left behind.
"""

from __future__ import annotations

from typing import Any

import pytest
from hook_actions import AfterHook
from sites import Site, snapshot

from uploader_core import Outcome, Phase
from uploader_core.testing import write_package

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# (server, action, after which hook; None = before the job starts, expected failing phase)
SCENARIOS = [
    ("postgres", "stop", None, Phase.STORE_METADATA),
    ("postgres", "kill", "store_metadata", Phase.MARK_COMPLETED),
    ("postgres", "stop", "transfer_files", Phase.MARK_COMPLETED),
    ("sftp", "stop", None, Phase.TRANSFER),
    ("sftp", "stop", "store_metadata", Phase.TRANSFER),
    ("sftp", "kill", "store_metadata", Phase.TRANSFER),
]


@pytest.mark.parametrize(("server", "action", "after", "phase"), SCENARIOS,
                         ids=[f"{s}-{a}-after-{h or 'start'}" for s, a, h, _ in SCENARIOS])
def test_server_fault_at_each_phase_is_retried_to_exactly_once(
    site: Site, postgres_server: Any, sftp_server: Any,
    server: str, action: str, after: str | None, phase: Phase,
) -> None:
    target = postgres_server if server == "postgres" else sftp_server
    for i in range(3):
        write_package(site.pending, f"evt_{i}", video=200_000, age_seconds=60 - i)
    originals = snapshot(site.pending)
    fault = getattr(target, action)
    plugins = [] if after is None else [("fault", AfterHook(after, fault))]

    with site.engine(plugins=plugins) as engine:
        if after is None:
            fault()
        first = engine.run_once()
        # The first job fails in the expected phase and the pass stops there. The next job
        # may have been recorded while evt_0 was transferring (one worker overlaps them); it
        # is then left for the next pass too, never transferred.
        assert [(r.event_id, r.outcome, r.phase) for r in first[:1]] == [
            ("evt_0", Outcome.RETRY, phase)]
        assert [(r.event_id, r.outcome) for r in first[1:]] in ([], [("evt_1", Outcome.RETRY)])
        assert snapshot(site.pending) == originals, "local files must stay untouched"
        target.start()
        second = engine.run_once()

    assert {r.event_id: r.outcome for r in second} == {
        f"evt_{i}": Outcome.COMPLETED for i in range(3)}
    site.assert_completed_exactly_once(originals)


@pytest.mark.parametrize("hook", ["store_metadata", "transfer_files", "mark_completed"])
def test_engine_killed_after_each_phase_recovers_on_restart(
    site: Site, driver: Any, hook: str
) -> None:
    for i in range(3):
        write_package(site.pending, f"evt_{i}", video=100_000, age_seconds=60 - i)
    originals = snapshot(site.pending)
    config = site.write_config()

    killed = driver(config, "--kill-after", hook)
    killed.wait(timeout=60)
    assert killed.returncode == -9
    assert len(snapshot(site.pending)) + len(snapshot(site.uploaded)) >= 3

    restarted = driver(config)
    _out, err = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, err
    site.assert_completed_exactly_once(originals)
    assert all(row["attempts"] in (1, 2) for row in site.rows().values())


def test_crash_between_the_two_archive_moves_with_real_servers(site: Site) -> None:
    write_package(site.pending, "evt_m")
    originals = snapshot(site.pending)
    with site.engine() as engine:
        engine.run_once()
    # Put the JSON back as a crash after the video's move would have left it.
    (site.uploaded / "evt_m.json").rename(site.pending / "evt_m.json")
    with site.engine() as engine:
        [result] = engine.run_once()
    assert result.outcome is Outcome.COMPLETED
    site.assert_completed_exactly_once(originals)
    assert site.rows()["evt_m"]["attempts"] == 2


def test_database_connection_closed_while_idle_is_replaced_without_a_failed_attempt(
    site: Site, postgres_server: Any
) -> None:
    import psycopg

    write_package(site.pending, "evt_before")
    with site.engine() as engine:
        [first] = engine.run_once()
        assert first.outcome is Outcome.COMPLETED
        # The server (or a pooler, or an idle reaper) ends the idle connection between passes.
        with psycopg.connect(postgres_server.admin_conninfo(site.pg.dbname),
                             autocommit=True) as admin:
            [(ended,)] = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'edge-uploader' AND datname = current_database()")
        assert ended == 1
        write_package(site.pending, "evt_after")
        [second] = engine.run_once()
        assert second.outcome is Outcome.COMPLETED, second.reason
        postgres: Any = engine.plugin("postgres")
        assert postgres.db.connects == 2
    assert site.rows()["evt_after"]["attempts"] == 1
