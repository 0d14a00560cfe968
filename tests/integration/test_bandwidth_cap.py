"""The bandwidth cap (``uploader.sftp.bandwidth_limit_kbps``) measured on the real sshd, and
settings reloaded without a restart.

The rate is measured twice: file bytes over the time of the upload, as the cap defines it,
and bytes on the wire (SSH framing included) as a fault proxy between the plugin and the
server counts them. A reload calls the plugin's ``uploader_configure`` again, in process.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import SftpDirs

from uploader_chaos.proxy import FaultProxy
from uploader_core import testing
from uploader_core.config import validate
from uploader_core.errors import ConfigurationError, Interrupted
from uploader_core.job import Job, nothing_upcoming
from uploader_plugins.sftp import SftpPlugin

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
TOLERANCE = 0.10


def make_job(directory: Path, event_id: str, size: int) -> Job:
    return testing.make_job(directory, event_id, video=size, document={"eventId": event_id})


def no_progress(done: int, total: int) -> None:
    pass


def configure(plugin: SftpPlugin, section: dict[str, Any]) -> None:
    plugin.uploader_configure(config=validate({"uploader": {"sftp": section}},
                                              plugin.uploader_config_sections()))


def kbps(nbytes: int, seconds: float) -> float:
    return nbytes * 8 / 1000 / seconds


class Rig:
    """A plugin reaching the test's sshd through a proxy that counts the bytes sent."""

    def __init__(self, sftp: SftpDirs, proxy: FaultProxy, known_hosts: Path) -> None:
        self.sftp = sftp
        self.proxy = proxy
        self.section: dict[str, Any] = {**sftp.config_section(), "port": proxy.port,
                                        "host_key_policy": "accept-new",
                                        "known_hosts_path": str(known_hosts)}
        self.plugin = SftpPlugin()

    def reconfigure(self, **changes: Any) -> None:
        self.section.update(changes)
        configure(self.plugin, self.section)

    def upload(self, job: Job, progress: Callable[[int, int], None] = no_progress
               ) -> tuple[float, float]:
        """Upload ``job``; its file-data rate and its wire rate, in kbps."""
        before = self.proxy.bytes_upstream
        started = time.monotonic()
        receipt = self.plugin.transfer_files(job=job, progress=progress,
                                             upcoming=nothing_upcoming)
        elapsed = time.monotonic() - started
        wire = self.proxy.bytes_upstream - before
        remote = self.sftp.local_video_dir / f"{job.event_id}.mp4"
        assert receipt.video_sha256 == hashlib.sha256(remote.read_bytes()).hexdigest()
        assert remote.read_bytes() == job.video_path.read_bytes()
        return kbps(job.video_size + job.json_size, elapsed), kbps(wire, elapsed)


@pytest.fixture
def rig(sftp_endpoint: SftpDirs, tmp_path: Path) -> Iterator[Rig]:
    endpoint = sftp_endpoint.endpoint
    with FaultProxy(endpoint.host, endpoint.port) as proxy:
        made = Rig(sftp_endpoint, proxy, tmp_path / "known_hosts")
        yield made
        made.plugin.uploader_shutdown()


def assert_near(measured: float, cap: float, what: str) -> None:
    error = measured / cap - 1
    print(f"\n{what}: cap {cap:g} kbps, measured {measured:.0f} kbps ({error:+.1%})")
    assert abs(error) <= TOLERANCE, f"{what}: {measured:.0f} kbps against a cap of {cap:g}"


# --- the cap -----------------------------------------------------------------------------------


def test_a_large_upload_stays_within_10_percent_of_the_cap(rig: Rig, tmp_path: Path) -> None:
    cap = 4000  # kilobits per second: 500,000 bytes of file data per second
    rig.reconfigure(bandwidth_limit_kbps=cap)
    rig.upload(make_job(tmp_path, "evt_warm", 1000))  # the connection is made

    data_rate, wire_rate = rig.upload(make_job(tmp_path, "evt_capped", 3_000_000))

    assert_near(data_rate, cap, "file data, 3 MB")
    assert_near(wire_rate, cap, "on the wire, 3 MB")


def test_no_cap_means_no_pacing(rig: Rig, tmp_path: Path) -> None:
    for unlimited in (0, None):
        rig.reconfigure(bandwidth_limit_kbps=unlimited)
        data_rate, _ = rig.upload(make_job(tmp_path, "evt_free", 8 * MiB))
        assert data_rate > 40_000  # loopback: far above any cap tested here


def test_a_negative_cap_is_refused(rig: Rig) -> None:
    with pytest.raises(ConfigurationError, match=r"bandwidth_limit_kbps: must be at least 0"):
        rig.reconfigure(bandwidth_limit_kbps=-1)


# --- reloading ---------------------------------------------------------------------------------


def test_a_reloaded_cap_applies_to_the_next_transfer_on_the_same_connection(
        rig: Rig, tmp_path: Path) -> None:
    rig.reconfigure(bandwidth_limit_kbps=16000)
    first, _ = rig.upload(make_job(tmp_path, "evt_fast", 2_000_000))
    rig.reconfigure(bandwidth_limit_kbps=8000)
    second, _ = rig.upload(make_job(tmp_path, "evt_slower", 1_500_000))

    assert_near(first, 16000, "before the reload")
    assert_near(second, 8000, "after the reload")
    assert rig.plugin.connections_made == 1  # only the cap changed: the connection is kept
    assert rig.proxy.connections_accepted == 1


def test_a_reloaded_cap_applies_to_the_transfer_under_way(rig: Rig, tmp_path: Path) -> None:
    """A reload during a transfer (from another thread) speeds it up at once; an endpoint
    setting changed with it is applied to the next connection, not to this transfer."""
    rig.reconfigure(bandwidth_limit_kbps=400)  # 50 kB/s: 2 MB would take 40 s
    job = make_job(tmp_path, "evt_sped_up", 2_000_000)
    moved_hosts = tmp_path / "moved" / "known_hosts"
    reloaded_at: list[tuple[float, int]] = []
    done_at: list[tuple[float, int]] = []
    reloads: list[threading.Thread] = []

    def progress(done: int, total: int) -> None:
        done_at.append((time.monotonic(), done))
        if not reloaded_at and done >= 60_000:
            def reload() -> None:
                reloaded_at.append((time.monotonic(), done_at[-1][1]))
                moved_hosts.parent.mkdir()
                shutil.copy(rig.section["known_hosts_path"], moved_hosts)
                rig.reconfigure(bandwidth_limit_kbps=16000, known_hosts_path=str(moved_hosts))
            reloaded_at.append((0.0, 0))  # once
            reloads.append(threading.Thread(target=reload))
            reloads[0].start()

    started = time.monotonic()
    rig.upload(job, progress)
    elapsed = time.monotonic() - started
    reloads[0].join()

    switched, done_then = reloaded_at[-1]
    after = kbps(job.video_size + job.json_size - done_then, done_at[-1][0] - switched)
    print(f"\ncap raised from 400 to 16000 kbps during the upload: done in {elapsed:.1f} s, "
          f"{after:.0f} kbps after the reload")
    assert elapsed < 5
    assert 16000 * 0.75 < after < 16000 * 1.25  # measured over about a second only
    # The transfer kept its connection; the next one is made with the new known_hosts file.
    assert rig.plugin.connections_made == 1
    rig.reconfigure()  # the same settings again: nothing changes
    rig.upload(make_job(tmp_path, "evt_after", 1000))
    assert rig.plugin.connections_made == 2
    assert moved_hosts.read_text() == Path(rig.section["known_hosts_path"]).read_text()


def test_interrupt_wakes_an_upload_paced_by_a_low_cap(rig: Rig, tmp_path: Path) -> None:
    rig.reconfigure(bandwidth_limit_kbps=8)  # one write request stands for 30 s of sleep
    job = make_job(tmp_path, "evt_crawling", 1 * MiB)
    timer = threading.Timer(0.5, rig.plugin.uploader_interrupt)
    timer.start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        rig.plugin.transfer_files(job=job, progress=no_progress,
                                  upcoming=nothing_upcoming)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("change", ["port", "known_hosts_path", "ssh_key_path", "timeout"])
def test_changed_endpoint_settings_drop_the_connection(
        rig: Rig, sftp_endpoint: SftpDirs, tmp_path: Path, change: str) -> None:
    rig.reconfigure()
    rig.upload(make_job(tmp_path, "evt_one", 1000))
    assert rig.proxy.active_connections == 1
    with FaultProxy(sftp_endpoint.endpoint.host, sftp_endpoint.endpoint.port) as second:
        if change == "port":
            rig.reconfigure(port=second.port)
        elif change == "known_hosts_path":
            copy = tmp_path / "known_hosts_copy"
            shutil.copy(rig.section["known_hosts_path"], copy)
            rig.reconfigure(known_hosts_path=str(copy))
        elif change == "ssh_key_path":
            key = tmp_path / "same_key_elsewhere"
            shutil.copy(rig.section["ssh_key_path"], key)
            key.chmod(0o600)
            # The same key under another path is another setting: reconnect all the same.
            rig.reconfigure(ssh_key_path=str(key))
        else:
            rig.reconfigure(timeout_seconds=7)
        deadline = time.monotonic() + 5
        while rig.proxy.active_connections:  # dropped at once, not at the next use
            assert time.monotonic() < deadline, "the old connection is still open"
            time.sleep(0.02)

        rig.upload(make_job(tmp_path, "evt_two", 1000))
        assert rig.plugin.connections_made == 2
        assert (second if change == "port" else rig.proxy).connections_accepted == 1 + (
            change != "port")


def test_a_reload_that_fails_keeps_the_settings_and_the_connection(
        rig: Rig, tmp_path: Path) -> None:
    rig.reconfigure(bandwidth_limit_kbps=0)
    rig.upload(make_job(tmp_path, "evt_one", 1000))
    with pytest.raises(ConfigurationError, match="does not exist"):
        configure(rig.plugin, {**rig.section, "ssh_key_path": str(tmp_path / "absent"),
                               "bandwidth_limit_kbps": 8})
    data_rate, _ = rig.upload(make_job(tmp_path, "evt_two", 4 * MiB))
    assert data_rate > 1000  # the cap of the refused reload was not applied
    assert rig.plugin.connections_made == 1
