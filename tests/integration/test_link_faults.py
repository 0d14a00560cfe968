"""Links that break the way cellular links do: cut mid-transfer, or silent with no reset.

A fault proxy sits between the engine and each real server. Every scenario ends with the
queue drained and each event completed exactly once.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sites import Site, snapshot

from uploader_chaos.proxy import FaultProxy
from uploader_core import Outcome, Phase
from uploader_core.testing import write_package

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@pytest.fixture
def proxied_site(make_site: Callable[..., Site]) -> Iterator[tuple[Site, FaultProxy, FaultProxy]]:
    site = make_site()
    db, sftp = site.config["uploader"]["database"], site.config["uploader"]["sftp"]
    with FaultProxy(db["host"], db["port"]) as db_proxy, \
            FaultProxy(sftp["host"], sftp["port"]) as sftp_proxy:
        db["port"] = db_proxy.port
        sftp["port"] = sftp_proxy.port
        # The proxy listens on another port than the known_hosts entry names.
        sftp["host_key_policy"] = "accept-new"
        sftp["known_hosts_path"] = str(site.root / "known_hosts")
        sftp["timeout_seconds"] = 2
        db["statement_timeout_seconds"] = 2
        yield site, db_proxy, sftp_proxy


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
