"""Resumable video uploads on the real sshd, and no temporary remote files left behind.

A video upload cut part-way continues on the next attempt from the temporary file the server
already holds, once a sample of its blocks matched the local video; a temporary file that does
not match is written again from the start. The receipt's sha256 always covers the whole file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import SftpDirs
from sites import Site

from uploader_chaos.proxy import FaultProxy
from uploader_core import Outcome, Phase, testing
from uploader_core.config import validate
from uploader_core.errors import TransientError
from uploader_core.job import Job, nothing_upcoming
from uploader_core.testing import write_package
from uploader_plugins.sftp import SftpPlugin, resume
from uploader_plugins.sftp.transfer import Transfer

pytestmark = [pytest.mark.integration, pytest.mark.faults]

MiB = 1024 * 1024


# --- helpers -----------------------------------------------------------------------------------


def write_big_package(pending: Path, event_id: str, size: int) -> str:
    """A package whose video is ``size`` pseudo-random bytes, streamed to disk; its sha256."""
    video_path, json_path = write_package(pending, event_id, video=1)
    rng = random.Random(event_id)
    digest = hashlib.sha256()
    with open(video_path, "wb") as video:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 4 * MiB))
            digest.update(chunk)
            video.write(chunk)
            left -= len(chunk)
    stamp = time.time() - 60
    for path in (video_path, json_path):
        os.utime(path, (stamp, stamp))
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def leftovers(sftp: SftpDirs) -> list[str]:
    return sorted(p.name for d in (sftp.local_video_dir, sftp.local_json_dir)
                  for p in d.iterdir() if p.name.endswith(".part"))


def behind_proxy(config_section: dict[str, Any], proxy: FaultProxy, known_hosts: Path) -> None:
    """Point an ``sftp`` section at ``proxy``, which listens on another port than known_hosts
    names: the key is recorded afresh on first connection."""
    config_section["port"] = proxy.port
    config_section["host_key_policy"] = "accept-new"
    config_section["known_hosts_path"] = str(known_hosts)


def make_job(directory: Path, event_id: str, video: bytes) -> Job:
    return testing.make_job(directory, event_id, video=video, document={"eventId": event_id})


def no_progress(done: int, total: int) -> None:
    pass


def place_partial(directory: Path, name: str, data: bytes) -> Path:
    """A temporary file as an earlier attempt leaves it: owned by the server's account."""
    path = directory / name
    path.write_bytes(data)
    owner = directory.stat()
    os.chown(path, owner.st_uid, owner.st_gid)
    return path


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def proxied_site(make_site: Callable[..., Site]) -> Iterator[tuple[Site, FaultProxy]]:
    site = make_site()
    sftp = site.config["uploader"]["sftp"]
    with FaultProxy(sftp["host"], sftp["port"]) as proxy:
        behind_proxy(sftp, proxy, site.root / "known_hosts")
        yield site, proxy


@pytest.fixture
def proxied_plugin(sftp_endpoint: SftpDirs, tmp_path: Path
                   ) -> Iterator[tuple[SftpPlugin, FaultProxy]]:
    """A configured plugin that reaches the test's sshd through a fault proxy."""
    endpoint = sftp_endpoint.endpoint
    with FaultProxy(endpoint.host, endpoint.port) as proxy:
        section = sftp_endpoint.config_section()
        behind_proxy(section, proxy, tmp_path / "known_hosts")
        plugin = SftpPlugin()
        plugin.uploader_configure(config=validate({"uploader": {"sftp": section}},
                                                  plugin.uploader_config_sections()))
        yield plugin, proxy
        plugin.uploader_shutdown()


# --- the target: a large video over a link cut every 20 MB -------------------------------------


def test_a_200_mb_video_over_a_link_cut_every_20_mb_completes_sending_little_twice(
        proxied_site: tuple[Site, FaultProxy]) -> None:
    site, proxy = proxied_site
    size = 200_000_000
    expected = write_big_package(site.pending, "evt_big", size)
    proxy.cut_after_bytes(20_000_000, "upstream", repeat=True)
    started = time.monotonic()
    passes = 0
    with site.engine() as engine:
        while True:
            passes += 1
            assert passes <= 30, "not completed after 30 passes"
            [result] = engine.run_once()
            if result.outcome is Outcome.COMPLETED:
                break
            assert (result.outcome, result.phase) == (Outcome.RETRY, Phase.TRANSFER), result
    elapsed = time.monotonic() - started
    ratio = proxy.bytes_upstream / size
    print(f"\n200 MB over a link cut every 20 MB: {passes} passes, {proxy.cuts} cuts, "
          f"{proxy.bytes_upstream:,} bytes sent upstream = {ratio:.3f} x the file, "
          f"{elapsed:.1f} s")
    assert proxy.cuts >= 9
    assert ratio <= 1.3

    row = site.rows()["evt_big"]
    assert row["status"] == "completed"
    assert row["video_sha256"] == expected
    assert sha256_file(site.remote_video("evt_big")) == expected
    assert sha256_file(site.uploaded / "evt_big.mp4") == expected
    assert site.remote_json("evt_big").read_bytes() == (site.uploaded / "evt_big.json").read_bytes()
    assert [p.name for p in site.pending.iterdir() if not p.name.startswith(".")] == []
    assert site.remote_leftovers() == []  # completed: no temporary file is left


# --- what is resumed and what is not -----------------------------------------------------------


def test_a_partial_file_that_is_a_prefix_is_continued_and_hashed_whole(
        sftp_endpoint: SftpDirs, proxied_plugin: tuple[SftpPlugin, FaultProxy],
        tmp_path: Path) -> None:
    plugin, proxy = proxied_plugin
    video = random.Random(1).randbytes(6 * MiB + 12345)
    job = make_job(tmp_path, "evt_prefix", video)
    place_partial(sftp_endpoint.local_video_dir, ".evt_prefix.mp4.part",
                  video[: 5 * MiB + 777])  # as a cut attempt leaves it
    reported: list[int] = []

    receipt = plugin.transfer_files(job=job, progress=lambda done, total: reported.append(done),
                                    upcoming=nothing_upcoming)

    assert (sftp_endpoint.local_video_dir / "evt_prefix.mp4").read_bytes() == video
    assert receipt.video_sha256 == hashlib.sha256(video).hexdigest()
    # About the 1 MiB that was missing (plus the JSON and the SSH handshake), not 6 MiB.
    assert proxy.bytes_upstream < 1.5 * MiB
    assert reported[0] >= 5 * MiB  # progress starts where the server's copy ends
    assert leftovers(sftp_endpoint) == []


@pytest.mark.parametrize("damage", ["different bytes", "one block changed", "longer"])
def test_a_partial_file_that_does_not_match_is_written_again_from_the_start(
        sftp_endpoint: SftpDirs, proxied_plugin: tuple[SftpPlugin, FaultProxy],
        tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    plugin, proxy = proxied_plugin
    video = random.Random(2).randbytes(4 * MiB)
    job = make_job(tmp_path, "evt_damaged", video)
    partial: bytes | bytearray
    if damage == "different bytes":  # the partial upload of another video under the same id
        partial = random.Random(3).randbytes(3 * MiB)
        message = "differs from the local video"
    elif damage == "one block changed":  # the last bytes the server received are wrong
        partial = bytearray(video[: 3 * MiB])
        partial[-1000] ^= 0xFF
        message = "differs from the local video"
    else:
        partial = video + b"tail"
        message = "more than the"
    place_partial(sftp_endpoint.local_video_dir, ".evt_damaged.mp4.part", bytes(partial))

    with caplog.at_level(logging.INFO, logger="uploader_plugins.sftp"):
        receipt = plugin.transfer_files(job=job, progress=no_progress,
                                        upcoming=nothing_upcoming)

    assert message in caplog.text
    assert (sftp_endpoint.local_video_dir / "evt_damaged.mp4").read_bytes() == video
    assert receipt.video_sha256 == hashlib.sha256(video).hexdigest()
    assert proxy.bytes_upstream > len(video)  # the whole video went again
    assert leftovers(sftp_endpoint) == []


def test_a_partial_file_holding_the_whole_video_is_only_renamed(
        sftp_endpoint: SftpDirs, proxied_plugin: tuple[SftpPlugin, FaultProxy],
        tmp_path: Path) -> None:
    plugin, proxy = proxied_plugin
    video = random.Random(4).randbytes(3 * MiB)
    job = make_job(tmp_path, "evt_whole", video)
    # The previous attempt was cut after the last write but before the rename.
    place_partial(sftp_endpoint.local_video_dir, ".evt_whole.mp4.part", video)

    receipt = plugin.transfer_files(job=job, progress=no_progress,
                                    upcoming=nothing_upcoming)

    assert (sftp_endpoint.local_video_dir / "evt_whole.mp4").read_bytes() == video
    assert receipt.video_sha256 == hashlib.sha256(video).hexdigest()
    assert proxy.bytes_upstream < 256 * 1024


def test_a_resumed_upload_cut_again_hashes_from_its_checkpoints(
        sftp_endpoint: SftpDirs, proxied_plugin: tuple[SftpPlugin, FaultProxy],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each resume hashes locally only what follows the last hash state kept, not the whole
    prefix again; the digest is the same."""
    monkeypatch.setattr(resume, "CHECKPOINT_BYTES", 2 * MiB)
    resumed: list[tuple[int, int]] = []  # (where local hashing started, resume offset)
    hash_prefix = Transfer._hash_prefix

    def spy(self: Transfer, video: Any, offset: int, checkpoints: resume.Checkpoints,
            view: memoryview) -> Any:
        resumed.append((checkpoints.best(offset)[0], offset))
        return hash_prefix(self, video, offset, checkpoints, view)

    monkeypatch.setattr(Transfer, "_hash_prefix", spy)
    plugin, proxy = proxied_plugin
    video = random.Random(5).randbytes(24 * MiB)
    job = make_job(tmp_path, "evt_hashes", video)
    proxy.cut_after_bytes(7 * MiB, "upstream", repeat=True)
    for _ in range(10):
        try:
            receipt = plugin.transfer_files(job=job, progress=no_progress,
                                            upcoming=nothing_upcoming)
            break
        except TransientError:  # the cut; the next attempt resumes
            continue
    else:
        pytest.fail("not completed")

    assert receipt.video_sha256 == hashlib.sha256(video).hexdigest()
    assert (sftp_endpoint.local_video_dir / "evt_hashes.mp4").read_bytes() == video
    assert len(resumed) >= 2, resumed
    for start, offset in resumed:
        assert 0 <= offset - start < 3 * MiB, resumed


# --- temporary files of quarantined events ------------------------------------------------------


def test_a_quarantined_event_leaves_no_temporary_file_on_the_server(
        proxied_site: tuple[Site, FaultProxy]) -> None:
    site, proxy = proxied_site
    write_package(site.pending, "evt_doomed", video=6_000_000)
    with site.engine() as engine:
        proxy.cut_after_bytes(3_000_000, "upstream")
        [first] = engine.run_once()
        assert (first.outcome, first.phase) == (Outcome.RETRY, Phase.TRANSFER)
        # The JSON's temporary file is opened together with the video's, so both are there.
        assert site.remote_leftovers() == [".evt_doomed.json.part", ".evt_doomed.mp4.part"]
        # The analyzer rewrites the document badly: the event is quarantined before any upload.
        (site.pending / "evt_doomed.json").write_text("{not json")
        stamp = time.time() - 60
        os.utime(site.pending / "evt_doomed.json", (stamp, stamp))
        [second] = engine.run_once()
        assert second.outcome is Outcome.QUARANTINED
    assert (site.failed / "evt_doomed.mp4").exists()
    assert site.remote_leftovers() == []


def test_post_quarantine_skips_names_that_are_not_event_ids_and_never_raises(
        sftp_endpoint: SftpDirs, proxied_plugin: tuple[SftpPlugin, FaultProxy]) -> None:
    plugin, proxy = proxied_plugin
    for name in ("../x", "", ".hidden", "a/b", "x" * 200, "évt", "x\n"):
        plugin.post_quarantine(event_id=name, reason="bad id")
    # No upload is ever started under such a name: nothing to remove, no connection made.
    assert plugin.connections_made == proxy.connections_accepted == 0


def test_temporary_files_of_events_quarantined_while_the_server_is_unreachable_go_later(
        sftp_endpoint: SftpDirs, proxied_plugin: tuple[SftpPlugin, FaultProxy],
        tmp_path: Path) -> None:
    plugin, proxy = proxied_plugin
    videos = sftp_endpoint.local_video_dir
    for n in range(3):
        place_partial(videos, f".evt_gone{n}.mp4.part", b"partial")
    place_partial(sftp_endpoint.local_json_dir, ".evt_gone0.json.part", b"{")
    proxy.refuse()

    started = time.monotonic()
    for n in range(3):
        plugin.post_quarantine(event_id=f"evt_gone{n}", reason="bad")  # never raises
    assert time.monotonic() - started < 2
    assert len(leftovers(sftp_endpoint)) == 4

    proxy.pass_through()
    job = make_job(tmp_path, "evt_next", b"video")
    plugin.transfer_files(job=job, progress=no_progress,
                          upcoming=nothing_upcoming)  # its connection removes them
    assert leftovers(sftp_endpoint) == []
    assert (videos / "evt_next.mp4").read_bytes() == b"video"
