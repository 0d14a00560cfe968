"""Links that break the way cellular links do: cut mid-transfer, or silent with no reset.

A fault proxy sits between the engine and each real server. Every scenario ends with the
queue drained and each event completed exactly once.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from sites import Site, snapshot

from uploader_chaos.proxy import FaultProxy
from uploader_core import Outcome, Phase
from uploader_core.testing import write_package

pytestmark = [pytest.mark.integration, pytest.mark.faults]


Proxied = tuple[Site, FaultProxy, FaultProxy]


@pytest.fixture
def make_proxied_site(make_site: Callable[..., Site]) -> Iterator[Callable[..., Proxied]]:
    """A site (``make_site``'s overrides) whose database and SFTP server are reached through
    fault proxies."""
    with ExitStack() as proxies:
        def make(**overrides: Any) -> Proxied:
            site = make_site(**overrides)
            db, sftp = site.config["uploader"]["database"], site.config["uploader"]["sftp"]
            db_proxy = proxies.enter_context(FaultProxy(db["host"], db["port"]))
            sftp_proxy = proxies.enter_context(FaultProxy(sftp["host"], sftp["port"]))
            db["port"] = db_proxy.port
            sftp["port"] = sftp_proxy.port
            # The proxy listens on another port than the known_hosts entry names.
            sftp["host_key_policy"] = "accept-new"
            sftp["known_hosts_path"] = str(site.root / "known_hosts")
            sftp["timeout_seconds"] = 2
            db["statement_timeout_seconds"] = 2
            return site, db_proxy, sftp_proxy

        yield make


@pytest.fixture
def proxied_site(make_proxied_site: Callable[..., Proxied]) -> Proxied:
    return make_proxied_site()


def drain(engine: Any, passes: int = 5) -> list[Any]:
    results: list[Any] = []
    for _ in range(passes):
        results = engine.run_once()
        if all(r.outcome is Outcome.COMPLETED for r in results):
            break
    return results


def test_sftp_connection_cut_mid_transfer_is_retried(
    proxied_site: tuple[Site, FaultProxy, FaultProxy]
) -> None:
    site, _, sftp_proxy = proxied_site
    write_package(site.pending, "evt_big", video=8_000_000)
    originals = snapshot(site.pending)
    with site.engine() as engine:
        sftp_proxy.cut_after_bytes(2_000_000, "upstream")
        [first] = engine.run_once()
        assert (first.outcome, first.phase) == (Outcome.RETRY, Phase.TRANSFER)
        assert sftp_proxy.cuts == 1
        assert snapshot(site.pending) == originals
        assert not site.remote_video("evt_big").exists(), "no partial file under the final name"
        drain(engine)
    site.assert_completed_exactly_once(originals)


@pytest.mark.parametrize("cut_after", [1_000_000, 10_000_000], ids=["fresh", "reused"])
def test_with_several_workers_a_link_cut_loses_nothing_and_completes_each_once(
    make_proxied_site: Callable[..., Proxied], cut_after: int
) -> None:
    site, _, sftp_proxy = make_proxied_site(workers=3)
    for i in range(9):
        write_package(site.pending, f"evt_{i}", video=3_000_000 + i, age_seconds=100 - i)
    originals = snapshot(site.pending)
    with site.engine() as engine:
        # Every worker's connection is reset once this much has gone out between them.
        sftp_proxy.cut_after_bytes(cut_after, "upstream")
        first = engine.run_once()
        assert sftp_proxy.cuts == 1
        outcomes = [(r.event_id, r.outcome.value, r.phase, r.reason) for r in first]
        if cut_after < 3_000_000:
            # In the first uploads, on new connections: those jobs are retried in the next
            # pass, and no worker takes a job after the failure.
            assert any(r.outcome is Outcome.RETRY and r.phase is Phase.TRANSFER
                       for r in first), outcomes
            assert len(first) < len(originals), outcomes
        else:
            # Connections kept from earlier jobs: a transfer cut on one is resumed at once
            # over a new connection.
            assert all(r.outcome in (Outcome.COMPLETED, Outcome.RETRY) for r in first), outcomes
        assert snapshot(site.pending) | snapshot(site.uploaded) == originals
        # Whatever is under its final name on the server is whole.
        for directory, suffix in ((site.sftp.local_video_dir, "mp4"),
                                  (site.sftp.local_json_dir, "json")):
            for path in directory.iterdir():
                if not path.name.startswith("."):
                    assert path.read_bytes() == originals[path.stem][suffix], path.name
        drain(engine)
    site.assert_completed_exactly_once(originals)
    # The workers connected at once: the server's key was recorded once, by one of them.
    assert len((site.root / "known_hosts").read_text().splitlines()) == 1


def test_database_connection_cut_is_retried(
    proxied_site: tuple[Site, FaultProxy, FaultProxy]
) -> None:
    site, db_proxy, _ = proxied_site
    write_package(site.pending, "evt_db")
    originals = snapshot(site.pending)
    with site.engine() as engine:
        db_proxy.cut_now()  # nothing open yet: the cut applies to the first connection
        db_proxy.refuse()
        [first] = engine.run_once()
        assert (first.outcome, first.phase) == (Outcome.RETRY, Phase.STORE_METADATA)
        db_proxy.pass_through()
        drain(engine)
    site.assert_completed_exactly_once(originals)


@pytest.mark.parametrize("endpoint", ["sftp", "database"])
def test_silent_link_times_out_instead_of_hanging(
    proxied_site: tuple[Site, FaultProxy, FaultProxy], endpoint: str
) -> None:
    site, db_proxy, sftp_proxy = proxied_site
    proxy = sftp_proxy if endpoint == "sftp" else db_proxy
    write_package(site.pending, "evt_warm")
    with site.engine() as engine:
        [warm] = engine.run_once()  # both connections are now open and reused
        assert warm.outcome is Outcome.COMPLETED
        proxy.stall()  # they go quiet: no data, no FIN, no reset
        write_package(site.pending, "evt_silent", video=2_000_000)
        originals = snapshot(site.uploaded) | snapshot(site.pending)
        started = time.monotonic()
        [result] = engine.run_once()
        elapsed = time.monotonic() - started
        assert result.outcome is Outcome.RETRY
        assert elapsed < 30, f"a silent link hung the engine for {elapsed:.0f} s"
        print(f"\nsilent {endpoint} link detected after {elapsed:.1f} s (timeout 2 s)")
        proxy.pass_through()
        drain(engine)
    site.assert_completed_exactly_once(originals)


@pytest.mark.parametrize(("signal_name", "link"), [
    ("SIGTERM", "slow"), ("SIGINT", "slow"), ("SIGTERM", "dead")])
def test_signal_during_a_transfer_stops_promptly_and_keeps_the_files(
    proxied_site: tuple[Site, FaultProxy, FaultProxy], driver: Any, signal_name: str,
    link: str,
) -> None:
    site, _, sftp_proxy = proxied_site
    write_package(site.pending, "evt_slow", video=5_000_000)
    originals = snapshot(site.pending)
    sftp_proxy.throttle(200_000)  # a 5 MB video would take 25 s
    engine = driver(site.write_config(), "--loop")
    part = site.sftp.local_video_dir / ".evt_slow.mp4.part"
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size > 0):
        assert time.monotonic() < deadline, "the transfer never started"
        assert engine.poll() is None, engine.communicate()[1]
        time.sleep(0.05)

    if link == "dead":
        sftp_proxy.stall()  # the cellular link dies silently mid-transfer
    sent = time.monotonic()
    engine.send_signal(getattr(signal, signal_name))
    _, err = engine.communicate(timeout=30)
    stopped_after = time.monotonic() - sent
    print(f"\n{signal_name} during a {link} transfer: stopped after {stopped_after:.2f} s")
    assert engine.returncode == 0, err
    assert stopped_after < 5
    assert "uploader stopped" in err
    assert snapshot(site.pending) == originals
    assert not site.remote_video("evt_slow").exists()

    sftp_proxy.pass_through()
    with site.engine() as fresh:
        drain(fresh)
    site.assert_completed_exactly_once(originals)
