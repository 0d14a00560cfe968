"""A simulated fleet: many devices share one PostgreSQL and one SFTP server.

Twenty engines, each with its own pending, uploaded and failed directories and its own event-id
prefix (``cam07_evt_0012``), upload into the same remote directories and the same events table
at once, each in a thread of its own calling ``run()`` until its queue has drained. While they
run, a sampler inside PostgreSQL reads ``pg_stat_activity`` every few milliseconds (each engine
sets its own ``application_name``) to show that no engine ever holds more than one database
connection. The second test puts a real PgBouncer in transaction pooling mode between the
fleet and PostgreSQL, as docs/fleet.md tells an operator to, and shows that the server then
sees at most the pool's size of connections.
"""

from __future__ import annotations

import contextlib
import hashlib
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from servers import PostgresEndpoint, PostgresServer, SftpDirs
from servers.local_pgbouncer import LocalPgBouncer, show
from sites import Site, site_config, snapshot

from uploader_core import DataUploader, Outcome, Phase
from uploader_core.testing import sample_document, write_package

pytestmark = pytest.mark.integration

DEVICES = 20
EVENTS_PER_DEVICE = 25
VIDEO_BYTES = 40 * 1024
# Every engine must have drained its queue by then: one that has not is starved or stuck.
DRAIN_DEADLINE_SECONDS = 60.0
WATCH_INTERVAL_SECONDS = 0.02


# --- the fleet ---------------------------------------------------------------------------------


@dataclass
class Device:
    name: str
    site: Site
    originals: dict[str, dict[str, bytes]]
    engine: DataUploader | None = None
    thread: threading.Thread | None = None
    error: BaseException | None = None
    first_done: float | None = None  # seconds after the fleet started
    drained: float | None = None

    @property
    def application_name(self) -> str:
        return f"fleet-{self.name}"

    def archived(self) -> int:
        return sum(1 for _ in self.site.uploaded.glob("*.json"))

    def pending_files(self) -> list[str]:
        """What is left to upload (hidden files, such as the queue lock, are never jobs)."""
        return sorted(p.name for p in self.site.pending.iterdir() if not p.name.startswith("."))


@dataclass
class FleetRun:
    devices: list[Device]
    elapsed: float
    gauges: dict[str, int] = field(default_factory=dict)  # peak of each, for the report

    @property
    def events(self) -> int:
        return sum(len(d.originals) for d in self.devices)

    def report(self, title: str) -> str:
        lines = [f"\n{title}",
                 f"  {len(self.devices)} engines x {EVENTS_PER_DEVICE} events = {self.events} "
                 f"events in {self.elapsed:.2f} s: {self.events / self.elapsed:.0f} events/s"]
        lines += [f"  peak {key}: {value}" for key, value in self.gauges.items()]
        lines.append("  engine  first event  drained  retries  db connects  ssh sessions")
        for d in self.devices:
            engine: Any = d.engine
            first = f"{d.first_done:9.2f} s" if d.first_done is not None else f"{'-':>11}"
            done = f"{d.drained:5.2f} s" if d.drained is not None else f"{'-':>7}"
            lines.append(
                f"  {d.name:6}  {first}  {done}  {engine.monitor.totals['retries']:7}  "
                f"{engine.plugin('postgres').db.connects:11}  "
                f"{engine.plugin('sftp').connections_made:12}")
        return "\n".join(lines)


def make_fleet(root: Path, engine_db: PostgresEndpoint, check_db: PostgresEndpoint,
               sftp: SftpDirs) -> list[Device]:
    """``DEVICES`` sites sharing ``sftp``'s remote directories; engines reach ``engine_db``.

    ``check_db`` is the same database reached directly, for checks behind the fleet's back.
    """
    devices = []
    for n in range(1, DEVICES + 1):
        name = f"cam{n:02d}"
        site_root = root / name
        config = site_config(site_root, engine_db, sftp)
        config["uploader"]["database"]["application_name"] = f"fleet-{name}"
        site = Site(site_root, config, check_db, sftp)
        for i in range(EVENTS_PER_DEVICE):
            event_id = f"{name}_evt_{i:04d}"
            document = sample_document(event_id, detections=i % 5)
            document["deviceId"] = name
            write_package(site.pending, event_id, video=VIDEO_BYTES + 997 * i + n,
                          document=document)
        devices.append(Device(name, site, snapshot(site.pending)))
    with devices[0].site.engine() as engine:
        engine.init_storage()
    return devices


def run_fleet(devices: list[Device],
              sample: Callable[[], dict[str, int]] = lambda: {}) -> FleetRun:
    """Run every engine in its own thread until its queue drains.

    ``sample()`` is called between checks and returns gauges whose peaks the run keeps. An
    engine whose pending directory is empty is asked to stop; one still busy at the deadline
    is stopped too, and the test then fails naming it.
    """
    for device in devices:
        device.engine = device.site.engine()

    def serve(device: Device) -> None:
        assert device.engine is not None
        try:
            device.engine.run()
        except BaseException as exc:  # reported by the test, not lost in a thread
            device.error = exc

    gauges: dict[str, int] = {}
    started = time.perf_counter()
    for device in devices:
        device.thread = threading.Thread(target=serve, args=(device,), name=device.name,
                                         daemon=True)
        device.thread.start()
    try:
        while True:
            for key, value in sample().items():
                gauges[key] = max(gauges.get(key, 0), value)
            now = time.perf_counter() - started
            busy = [d for d in devices if d.drained is None]
            for device in busy:
                assert device.engine is not None and device.thread is not None
                if device.first_done is None and device.archived() > 0:
                    device.first_done = now
                if not device.pending_files() or not device.thread.is_alive():
                    device.drained = now
                    device.engine.request_stop()
            if not busy or now > DRAIN_DEADLINE_SECONDS:
                break
            time.sleep(WATCH_INTERVAL_SECONDS)
    finally:
        for device in devices:
            if device.engine is not None:
                device.engine.request_stop()
        for device in devices:
            if device.thread is not None:
                device.thread.join(timeout=15)
    if all(d.drained is not None for d in devices):
        elapsed = max(d.drained or 0.0 for d in devices)
    else:
        elapsed = time.perf_counter() - started
    return FleetRun(devices, elapsed, gauges)


def assert_fleet_completed_exactly_once(run: FleetRun) -> None:
    """The fleet-wide ``Site.assert_completed_exactly_once``: one table, one remote tree."""
    devices = run.devices
    stuck = [d.name for d in devices if d.thread is not None and d.thread.is_alive()]
    assert not stuck, f"engines did not stop: {stuck}"
    assert [(d.name, d.error) for d in devices if d.error] == []
    left = {d.name: d.pending_files()[:4] for d in devices if d.pending_files()}
    assert not left, f"engines that did not drain in {DRAIN_DEADLINE_SECONDS:g} s: {left}"

    site = devices[0].site
    rows = site.rows()
    expected = {event_id for d in devices for event_id in d.originals}
    assert len(expected) == run.events
    assert set(rows) == expected
    for device in devices:
        for event_id, files in device.originals.items():
            row = rows[event_id]
            assert row["status"] == "completed", event_id
            assert row["attempts"] == 1, (event_id, row["attempts"])
            assert row["remote_video_path"] == f"{site.sftp.remote_video_dir}/{event_id}.mp4"
            assert row["remote_json_path"] == f"{site.sftp.remote_json_dir}/{event_id}.json"
            assert row["video_sha256"] == hashlib.sha256(files["mp4"]).hexdigest()
            assert site.remote_video(event_id).read_bytes() == files["mp4"], event_id
            assert site.remote_json(event_id).read_bytes() == files["json"], event_id
            assert (device.site.uploaded / f"{event_id}.mp4").read_bytes() == files["mp4"]
            assert (device.site.uploaded / f"{event_id}.json").read_bytes() == files["json"]
        assert list(device.site.failed.iterdir()) == []
    remote = {p.name for p in site.sftp.local_video_dir.iterdir()}
    remote |= {p.name for p in site.sftp.local_json_dir.iterdir()}
    assert remote == {f"{e}.{s}" for e in expected for s in ("mp4", "json")}
    assert site.remote_leftovers() == []


def assert_no_engine_starved(run: FleetRun) -> None:
    """Engines progress side by side: none waits for the others to finish before it starts."""
    first = {d.name: d.first_done for d in run.devices}
    drained = {d.name: d.drained or 0.0 for d in run.devices}
    # Every engine completed an event before the first of them ran out of work. An order, not
    # a share of the run's time: the engines here are threads of one interpreter, and how its
    # lock is handed among some hundred threads moves an engine's first event by a second
    # from one run to the next, with the servers playing no part in it.
    assert all(t is not None and t < min(drained.values()) for t in first.values()), \
        (first, drained)
    assert max(drained.values()) <= 2 * min(drained.values()) + 2.0, drained


def assert_one_connection_per_engine(devices: list[Device]) -> None:
    """Each engine opened one database connection and one SSH session for its whole run."""
    for device in devices:
        engine: Any = device.engine
        assert (device.name, engine.plugin("postgres").db.connects) == (device.name, 1)
        assert (device.name, engine.plugin("sftp").connections_made) == (device.name, 1)


# --- what PostgreSQL sees ----------------------------------------------------------------------

# Runs inside PostgreSQL, so its pace does not depend on the test process (whose threads are
# busy running twenty engines): every few milliseconds it counts the test role's backends in
# one database, by application_name, and keeps the peak of each count. It stops once it can
# take the advisory lock that the test holds for as long as the fleet runs.
_SAMPLER = """
CREATE FUNCTION pg_temp.sample_connections(db text, role text, stop_key bigint,
                                           max_seconds float8, pause float8)
RETURNS TABLE (gauge text, peak bigint, samples bigint) LANGUAGE plpgsql AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + make_interval(secs => max_seconds);
    taken bigint := 0;
BEGIN
    CREATE TEMP TABLE peaks (name text PRIMARY KEY, top bigint NOT NULL);
    LOOP
        -- pg_stat_activity is otherwise read once per transaction.
        PERFORM pg_stat_clear_snapshot();
        INSERT INTO peaks AS p
        SELECT 'app:' || a.application_name, count(*) FROM pg_stat_activity a
        WHERE a.datname = db AND a.usename = role AND a.backend_type = 'client backend'
        GROUP BY a.application_name
        UNION ALL
        SELECT 'total', count(*) FROM pg_stat_activity a
        WHERE a.datname = db AND a.usename = role AND a.backend_type = 'client backend'
        ON CONFLICT (name) DO UPDATE SET top = greatest(p.top, EXCLUDED.top);
        taken := taken + 1;
        EXIT WHEN clock_timestamp() > deadline OR pg_try_advisory_lock(stop_key);
        PERFORM pg_sleep(pause);
    END LOOP;
    RETURN QUERY SELECT name, top, taken FROM peaks;
END
$$
"""
_SAMPLER_LOCK = 72_100_421
_SAMPLER_PAUSE_SECONDS = 0.003


class ConnectionSampler:
    """Peak counts of the test role's backends in one database, sampled server-side."""

    def __init__(self, admin_conninfo: str, endpoint: PostgresEndpoint) -> None:
        self._admin_conninfo = admin_conninfo
        self._endpoint = endpoint
        self._result: list[tuple[str, int, int]] = []
        self._error: BaseException | None = None
        self.peaks: dict[str, int] = {}
        self.samples = 0

    def _sample(self, ready: threading.Event) -> None:
        try:
            with psycopg.connect(self._admin_conninfo, autocommit=True) as conn:
                conn.execute(_SAMPLER)
                ready.set()
                self._result = conn.execute(
                    "SELECT * FROM pg_temp.sample_connections(%s, %s, %s, %s, %s)",
                    [self._endpoint.dbname, self._endpoint.user, _SAMPLER_LOCK,
                     DRAIN_DEADLINE_SECONDS + 30, _SAMPLER_PAUSE_SECONDS]).fetchall()
        except BaseException as exc:  # raised again by running()
            self._error = exc
        finally:
            ready.set()

    @contextlib.contextmanager
    def running(self) -> Iterator[ConnectionSampler]:
        with psycopg.connect(self._admin_conninfo, autocommit=True) as stop:
            stop.execute("SELECT pg_advisory_lock(%s)", [_SAMPLER_LOCK])
            ready = threading.Event()
            thread = threading.Thread(target=self._sample, args=(ready,),
                                      name="connection-sampler", daemon=True)
            thread.start()
            ready.wait(10)
            try:
                yield self
            finally:
                stop.execute("SELECT pg_advisory_unlock(%s)", [_SAMPLER_LOCK])
                thread.join(timeout=10)
        if self._error is not None:
            raise self._error
        self.peaks = {name: int(peak) for name, peak, _ in self._result}
        self.samples = max((int(n) for _, _, n in self._result), default=0)

    def peak(self, application_name: str) -> int:
        return self.peaks.get(f"app:{application_name}", 0)


@pytest.fixture
def sampler(postgres_server: PostgresServer, pg_endpoint: PostgresEndpoint
            ) -> ConnectionSampler:
    return ConnectionSampler(postgres_server.admin_conninfo(), pg_endpoint)


# --- the tests ---------------------------------------------------------------------------------


def test_twenty_engines_share_one_database_and_one_sftp_server(
    tmp_path: Path, pg_endpoint: PostgresEndpoint, sftp_endpoint: SftpDirs,
    sampler: ConnectionSampler,
) -> None:
    devices = make_fleet(tmp_path, pg_endpoint, pg_endpoint, sftp_endpoint)

    with sampler.running():
        run = run_fleet(devices)

    per_engine = {d.name: sampler.peak(d.application_name) for d in devices}
    run.gauges["connections of one engine (pg_stat_activity)"] = max(per_engine.values())
    run.gauges["connections of the fleet (pg_stat_activity)"] = sampler.peaks.get("total", 0)
    print(run.report(f"fleet straight to PostgreSQL ({sampler.samples} server-side samples)"))

    assert_fleet_completed_exactly_once(run)
    assert_no_engine_starved(run)
    assert_one_connection_per_engine(devices)
    assert sampler.samples > 100
    assert per_engine == {d.name: 1 for d in devices}
    # Seen connected all at once: the fleet really ran concurrently.
    assert sampler.peaks["total"] > DEVICES // 2


def test_the_fleet_works_through_pgbouncer_in_transaction_pooling_mode(
    tmp_path: Path, pg_endpoint: PostgresEndpoint, sftp_endpoint: SftpDirs,
    pgbouncer: LocalPgBouncer, sampler: ConnectionSampler,
) -> None:
    devices = make_fleet(tmp_path, pgbouncer.endpoint_for(pg_endpoint), pg_endpoint,
                         sftp_endpoint)
    names = {d.application_name for d in devices}
    waits: list[int] = []

    with pgbouncer.console() as console:

        def sample() -> dict[str, int]:
            """PgBouncer's own view: its clients per engine, its server connections."""
            clients: dict[str, int] = {}
            for client in show(console, "clients"):
                if client["database"] == pg_endpoint.dbname:
                    name = client["application_name"]
                    clients[name] = clients.get(name, 0) + 1
            [pool] = [p for p in show(console, "pools") if p["database"] == pg_endpoint.dbname]
            waits.append(pool["cl_waiting"])
            return {
                "clients of one engine (SHOW CLIENTS)": max(
                    (clients.get(n, 0) for n in names), default=0),
                "clients of the fleet (SHOW CLIENTS)": sum(clients.get(n, 0) for n in names),
                "clients waiting for a server (SHOW POOLS)": pool["cl_waiting"],
                "server connections (SHOW POOLS)": sum(
                    pool[k] for k in ("sv_active", "sv_idle", "sv_used", "sv_tested",
                                      "sv_login")),
                "client wait (ms, SHOW POOLS maxwait)":
                    pool["maxwait"] * 1000 + pool["maxwait_us"] // 1000,
            }

        with sampler.running():
            run = run_fleet(devices, sample)

    run.gauges["server connections (pg_stat_activity)"] = sampler.peaks.get("total", 0)
    # PgBouncer passes each client's application_name to the server connection serving it.
    named = [d.name for d in devices if sampler.peak(d.application_name)]
    print(run.report(
        f"fleet through PgBouncer (pool_mode = transaction, default_pool_size = "
        f"{pgbouncer.pool_size}; {sampler.samples} server-side samples, {len(waits)} PgBouncer "
        f"samples, mean clients waiting {statistics.fmean(waits or [0]):.1f}, "
        f"{len(named)} engines seen by name in pg_stat_activity)"))

    assert_fleet_completed_exactly_once(run)
    assert_no_engine_starved(run)
    assert_one_connection_per_engine(devices)
    assert sampler.samples > 100
    assert run.gauges["clients of one engine (SHOW CLIENTS)"] == 1
    assert run.gauges["clients of the fleet (SHOW CLIENTS)"] > DEVICES // 2
    assert 0 < sampler.peaks["total"] <= pgbouncer.pool_size
    assert run.gauges["server connections (SHOW POOLS)"] <= pgbouncer.pool_size
    assert len(named) > DEVICES // 2


def test_a_statement_timeout_set_on_the_role_reaches_the_engine_through_pgbouncer(
    tmp_path: Path, pg_endpoint: PostgresEndpoint, sftp_endpoint: SftpDirs,
    pgbouncer: LocalPgBouncer, postgres_server: PostgresServer,
) -> None:
    """docs/fleet.md: the engine sends no startup options, so the server-side deadline is set
    per role; pooled server connections take it when they log in again (RECONNECT)."""
    root = tmp_path / "cam01"
    site = Site(root, site_config(root, pgbouncer.endpoint_for(pg_endpoint), sftp_endpoint),
                pg_endpoint, sftp_endpoint)
    with site.engine() as engine:
        engine.init_storage()
    write_package(site.pending, "cam01_evt_0001")
    originals = snapshot(site.pending)
    role_in_db = sql.SQL("ALTER ROLE {} IN DATABASE {}").format(
        sql.Identifier(pg_endpoint.user), sql.Identifier(pg_endpoint.dbname))
    with psycopg.connect(postgres_server.admin_conninfo(pg_endpoint.dbname),
                         autocommit=True) as admin:
        # An overloaded server: every insert takes longer than the role's deadline.
        admin.execute("CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql "
                      "AS $$ BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$")
        admin.execute("CREATE TRIGGER slow BEFORE INSERT ON events "
                      "FOR EACH ROW EXECUTE FUNCTION slow()")
        admin.execute(role_in_db + sql.SQL(" SET statement_timeout = '300ms'"))
        try:
            pgbouncer.reconnect(pg_endpoint.dbname)
            with site.engine() as engine:
                started = time.perf_counter()
                [first] = engine.run_once()
                elapsed = time.perf_counter() - started
            # Cancelled by the server long before the engine's own 5 s deadline; nothing lost.
            assert (first.outcome, first.phase) == (Outcome.RETRY, Phase.STORE_METADATA)
            print(f"\nserver-side statement_timeout after {elapsed:.2f} s: {first.reason}")
            assert "statement timeout" in (first.reason or ""), first.reason
            assert elapsed < 3
            assert site.rows() == {}
            assert snapshot(site.pending) == originals

            admin.execute("DROP TRIGGER slow ON events")
            with site.engine() as engine:
                [second] = engine.run_once()
            assert second.outcome is Outcome.COMPLETED
            site.assert_completed_exactly_once(originals)
            assert site.rows()["cam01_evt_0001"]["attempts"] == 1
        finally:
            admin.execute(role_in_db + sql.SQL(" RESET statement_timeout"))
            pgbouncer.reconnect(pg_endpoint.dbname)
