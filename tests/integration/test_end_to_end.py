"""The engine with its built-in plugins against a real PostgreSQL and a real OpenSSH sshd."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sites import Site, run_cli, snapshot

from uploader_core import DataUploader, Outcome
from uploader_core.testing import sample_document, write_package

pytestmark = pytest.mark.integration


def test_packages_are_recorded_uploaded_and_archived_exactly_once(site: Site) -> None:
    for i, size in enumerate([1, 1000, 65536, 3_000_000]):
        write_package(site.pending, f"evt_{i}", video=size)
    originals = snapshot(site.pending)

    with site.engine() as engine:
        results = engine.run_once()

    assert {r.event_id: r.outcome for r in results} == {
        f"evt_{i}": Outcome.COMPLETED for i in range(4)}
    site.assert_completed_exactly_once(originals)


def test_uploader_run_once_drains_200_events(site: Site) -> None:
    for i in range(200):
        write_package(site.pending, f"evt_{i:03d}", video=16 * 1024 + i,
                      document=sample_document(f"evt_{i:03d}", detections=i % 7))
    originals = snapshot(site.pending)
    config = site.write_config()

    started = time.perf_counter()
    done = run_cli("run", "-c", str(config), "--once", timeout=300)
    elapsed = time.perf_counter() - started

    assert done.returncode == 0, done.stderr[-3000:]
    print(f"\n200 events drained by 'uploader run --once' in {elapsed:.2f} s")
    site.assert_completed_exactly_once(originals)
    assert "200 completed" in done.stderr


def test_one_database_connection_and_one_ssh_session_serve_a_whole_pass(site: Site) -> None:
    for i in range(20):
        write_package(site.pending, f"evt_{i}")
    with site.engine() as engine:
        engine.run_once()
        postgres: Any = engine.plugin("postgres")
        sftp: Any = engine.plugin("sftp")
        assert postgres.db.connects == 1
        assert sftp.connections_made == 1
    with psycopg.connect(site.pg.conninfo()) as conn:
        [(count,)] = conn.execute("SELECT count(*) FROM events WHERE status = 'completed'")
    assert count == 20


def test_retry_after_an_sftp_outage_keeps_a_single_row(site: Site, sftp_server: object) -> None:
    write_package(site.pending, "evt_r")
    originals = snapshot(site.pending)
    with site.engine() as engine:
        sftp_server.stop()  # type: ignore[attr-defined]
        [first] = engine.run_once()
        assert first.outcome is Outcome.RETRY
        assert site.rows()["evt_r"]["status"] == "pending"
        assert snapshot(site.pending) == originals
        sftp_server.start()  # type: ignore[attr-defined]
        [second] = engine.run_once()
    assert second.outcome is Outcome.COMPLETED
    site.assert_completed_exactly_once(originals)
    assert site.rows()["evt_r"]["attempts"] == 2


def test_init_db_is_safe_to_run_twice(make_site: Callable[..., Site]) -> None:
    site = make_site(init_db=False)
    config = site.write_config()
    for _ in range(2):
        done = run_cli("init-db", "-c", str(config))
        assert done.returncode == 0, done.stderr
    assert site.rows() == {}


def test_missing_table_says_to_run_init_db(make_site: Callable[..., Site]) -> None:
    site = make_site(init_db=False)
    write_package(site.pending, "evt_t")
    done = run_cli("run", "-c", str(site.write_config()), "--once")
    assert done.returncode == 1
    assert "uploader init-db" in done.stderr
    assert (site.pending / "evt_t.json").exists()
    assert not site.failed.exists() or list(site.failed.iterdir()) == []


def test_check_reports_one_line_per_item(site: Site) -> None:
    done = run_cli("check", "-c", str(site.write_config()))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert all(line.startswith("PASS") for line in lines)
    text = done.stdout
    for item in ("database: connect", "database: table events", "sftp: host key",
                 "sftp: authentication", "remote_video_dir writable",
                 "remote_json_dir writable"):
        assert item in text


def test_check_names_the_failing_item(make_site: Callable[..., Site]) -> None:
    site = make_site(init_db=False)
    site.config["uploader"]["sftp"]["remote_json_dir"] = "/nonexistent/json"
    done = run_cli("check", "-c", str(site.write_config()))
    assert done.returncode == 1
    failing = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert any("table events" in line and "init-db" in line for line in failing), done.stdout
    assert any("remote_json_dir" in line for line in failing), done.stdout


def test_wrong_database_password_is_reported_without_the_secret(
    make_site: Callable[..., Site]
) -> None:
    site = make_site()
    secret = "Sup3r-s3cret-w0rd"
    site.config["uploader"]["database"]["password"] = secret
    write_package(site.pending, "evt_p")
    done = run_cli("run", "-c", str(site.write_config()), "--once")
    assert done.returncode == 1
    assert "uploader.database.password" in done.stderr
    assert secret not in done.stderr + done.stdout
    assert (site.pending / "evt_p.json").exists()


def test_database_password_can_come_from_the_environment(make_site: Callable[..., Site]) -> None:
    site = make_site()
    database = site.config["uploader"]["database"]
    password = database.pop("password")
    database["password_env"] = "EDGE_DB_PASSWORD"
    write_package(site.pending, "evt_env")
    env = {**os.environ, "EDGE_DB_PASSWORD": password}
    done = run_cli("run", "-c", str(site.write_config()), "--once", env=env)
    assert done.returncode == 0, done.stderr
    assert site.rows()["evt_env"]["status"] == "completed"


def test_third_party_plugin_distribution_is_loaded_from_its_entry_point(
    site: Site, tmp_path: Path
) -> None:
    target = tmp_path / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target),
                    str(Path(__file__).parents[1] / "example_plugin")], check=True)
    audit_log = tmp_path / "audit.log"
    site.config["uploader"]["audit"] = {"log_path": str(audit_log),
                                        "blocked_sites": ["private-garden"]}
    write_package(site.pending, "evt_ok")
    blocked = sample_document("evt_blocked")
    blocked["site"] = "private-garden"
    write_package(site.pending, "evt_blocked", document=blocked)
    env = {**os.environ, "PYTHONPATH": str(target)}

    done = run_cli("run", "-c", str(site.write_config()), "--once", env=env)

    assert done.returncode == 0, done.stderr
    assert audit_log.read_text().startswith("archived evt_ok ")
    reason = (site.failed / "evt_blocked.error.json").read_text()
    assert "blocked by the audit plugin" in reason
    assert sorted(site.rows()) == ["evt_ok"]

    site.config["uploader"]["plugins"] = {"disabled": ["audit"]}
    del site.config["uploader"]["audit"]
    write_package(site.pending, "evt_after")
    done = run_cli("run", "-c", str(site.write_config()), "--once", env=env)
    assert done.returncode == 0, done.stderr
    assert "evt_after" not in audit_log.read_text()


def test_check_fails_a_role_that_may_read_but_not_write(
    site: Site, postgres_server: Any
) -> None:
    with psycopg.connect(postgres_server.admin_conninfo(site.pg.dbname),
                         autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS reader_only")
        admin.execute("CREATE ROLE reader_only LOGIN PASSWORD 'reader-pass'")
        admin.execute("GRANT SELECT ON events TO reader_only")
    try:
        site.config["uploader"]["database"].update(user="reader_only", password="reader-pass")
        done = run_cli("check", "-c", str(site.write_config()))
        assert done.returncode == 1
        [line] = [x for x in done.stdout.splitlines() if "privileges" in x]
        assert line.startswith("FAIL"), line
    finally:
        with psycopg.connect(postgres_server.admin_conninfo(site.pg.dbname),
                             autocommit=True) as admin:
            admin.execute("DROP OWNED BY reader_only")
            admin.execute("DROP ROLE reader_only")


def test_reload_keeps_the_database_connection_unless_its_settings_change(site: Site) -> None:
    current = site.config
    write_package(site.pending, "evt_1")
    with DataUploader(current, reload_config=lambda: current) as engine:
        engine.run_once()
        postgres: Any = engine.plugin("postgres")
        first = postgres.db
        assert engine.reload()
        assert postgres.db is first and first.connects == 1
        current["uploader"]["database"]["statement_timeout_seconds"] = 7
        assert engine.reload()
        assert postgres.db is not first
        assert first._conn is None, "the replaced connection was closed"
        write_package(site.pending, "evt_2")
        [result] = engine.run_once()
        assert result.outcome is Outcome.COMPLETED


def test_parallel_workers_upload_exactly_once_each_with_its_own_connections(
    make_site: Callable[..., Site],
) -> None:
    site = make_site(workers=3)
    for i in range(30):
        write_package(site.pending, f"evt_{i:02d}", video=200_000 + i, age_seconds=100 - i)
    originals = snapshot(site.pending)
    with site.engine() as engine:
        results = engine.run_once()
        hosts: list[Any] = [worker.host for worker in engine._workers]
        connects = [host.get("postgres").db.connects for host in hosts]
        handshakes = [host.get("sftp").connections_made for host in hosts]
    assert all(r.outcome is Outcome.COMPLETED for r in results) and len(results) == 30
    site.assert_completed_exactly_once(originals)
    assert sum(connects) >= 2 and all(c <= 1 for c in connects), connects
    assert all(h <= 1 for h in handshakes), handshakes


def test_transport_openssh_loses_nothing_when_the_server_is_down_then_completes_once(
        site: Site) -> None:
    """The engine with ``sftp.transport: openssh``: a refused connection leaves every local
    byte where it was and says why; the next pass uploads each event exactly once."""
    for i, size in enumerate([1000, 3_000_000]):
        write_package(site.pending, f"evt_{i}", video=size)
    originals = snapshot(site.pending)
    sftp = site.config["uploader"]["sftp"]
    sftp["transport"] = "openssh"
    port = sftp["port"]
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        sftp["port"] = unused.getsockname()[1]  # nothing listens there once it is closed

    with site.engine() as engine:
        stopped = engine.run_once()
    # The pass stops at the first job; a job recorded meanwhile is left for the next pass.
    assert {r.outcome for r in stopped} == {Outcome.RETRY}
    assert "cannot connect to SFTP server" in (stopped[0].reason or "")
    assert "connection refused" in (stopped[0].reason or "")
    assert snapshot(site.pending) == originals
    assert not any(site.uploaded.iterdir())

    sftp["port"] = port
    with site.engine() as engine:
        results = engine.run_once()
        sftp_plugin: Any = engine.plugin("sftp")
        assert sftp_plugin.connections_made == 1
    assert {r.outcome for r in results} == {Outcome.COMPLETED}
    site.assert_completed_exactly_once(originals)
