"""The SFTP plugin opens the next job's files while the job before it finishes, against the
test suite's own sshd: the files land byte for byte, an opening that is not used is closed on
the server, and one made on a connection since lost, or for directories since changed, is
never used."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from servers import SftpDirs
from test_sftp_plugin import (
    FaultProxy,
    PluginFactory,
    assert_uploaded,
    make_plugin,
    no_progress,
    proxy,
    via_proxy,
    write_job,
)

from uploader_core.config import validate
from uploader_core.errors import UploaderError
from uploader_core.job import Job, TransferReceipt, nothing_upcoming
from uploader_plugins.sftp import SftpPlugin

pytestmark = pytest.mark.integration

# Fixtures shared with test_sftp_plugin.py; imported so that pytest finds them in this module.
__all__ = ["make_plugin", "proxy", "via_proxy"]


def send(plugin: SftpPlugin, job: Job, upcoming: Callable[[], Job | None] = nothing_upcoming
         ) -> TransferReceipt:
    return plugin.transfer_files(job=job, progress=no_progress, upcoming=upcoming)


def looked_ahead(plugin: SftpPlugin) -> tuple[int, int]:
    """Openings used by their job, and released unused."""
    lookahead: Any = plugin._lookahead
    return lookahead.used, lookahead.released


def files_open_under(*directories: Path) -> list[str]:
    """The files under ``directories`` that some process holds open (the sshd sessions)."""
    roots = [str(d.resolve()) + "/" for d in directories]
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if any(target.startswith(root) for root in roots):
                found.append(target)
    return found


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_each_job_uses_the_files_opened_for_it_by_the_job_before(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path,
        transport: str) -> None:
    plugin = make_plugin(sftp_endpoint.config_section(), transport=transport)
    jobs = [write_job(tmp_path, f"evt_{n}", 300_000 + n) for n in range(5)]

    for n, job in enumerate(jobs):
        following = jobs[n + 1] if n + 1 < len(jobs) else None

        def upcoming(following: Job | None = following) -> Job | None:
            return following

        receipt = send(plugin, job, upcoming)
        assert_uploaded(sftp_endpoint.endpoint, receipt, job, opened_ahead=following)

    assert looked_ahead(plugin) == (4, 0)
    assert plugin.connections_made == 1
    assert files_open_under(sftp_endpoint.local_video_dir, sftp_endpoint.local_json_dir) == []


def test_an_opening_for_a_job_that_does_not_come_next_is_closed_on_the_server(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(sftp_endpoint.config_section())
    first, expected, instead = (write_job(tmp_path, name, 200_000)
                                for name in ("evt_first", "evt_expected", "evt_instead"))
    send(plugin, first, lambda: expected)
    held = files_open_under(sftp_endpoint.local_video_dir, sftp_endpoint.local_json_dir)
    assert sorted(Path(p).name for p in held) == [".evt_expected.json.part",
                                                  ".evt_expected.mp4.part"]

    # The pass stopped, and the next one starts with another job.
    assert_uploaded(sftp_endpoint.endpoint, send(plugin, instead), instead, opened_ahead=expected)

    assert looked_ahead(plugin) == (0, 1)
    assert files_open_under(sftp_endpoint.local_video_dir, sftp_endpoint.local_json_dir) == []
    # The expected job, when it comes, opens its files itself; what the opening created
    # (empty temporary files) is overwritten.
    assert_uploaded(sftp_endpoint.endpoint, send(plugin, expected), expected)


@pytest.mark.faults
@pytest.mark.parametrize("video", [200_000, 5_000_000])
def test_a_connection_lost_after_the_next_job_was_opened_costs_that_job_a_reconnection(
        sftp_endpoint: SftpDirs, proxy: FaultProxy, via_proxy: dict[str, Any],
        make_plugin: PluginFactory, tmp_path: Path, video: int) -> None:
    plugin = make_plugin(via_proxy)
    first, following = write_job(tmp_path, "evt_one", video), \
        write_job(tmp_path, "evt_two", video)
    send(plugin, first, lambda: following)
    proxy.cut_next.set()  # the connection, and the files opened on it, die while idle

    # Found dead when the job uses it (its opens were answered before the cut): the job
    # starts again on a new connection, opening its files itself.
    assert_uploaded(sftp_endpoint.endpoint, send(plugin, following), following)

    assert plugin.connections_made == 2


def test_an_opening_in_directories_a_reload_changed_is_closed_and_the_job_goes_to_the_new_ones(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    section = sftp_endpoint.config_section()
    plugin = make_plugin(section)
    first, following = write_job(tmp_path, "evt_one", 200_000), \
        write_job(tmp_path, "evt_two", 200_000)
    send(plugin, first, lambda: following)
    moved = sftp_endpoint.local_video_dir.parent / "videos-moved"
    moved.mkdir()
    os.chown(moved, sftp_endpoint.local_video_dir.stat().st_uid,
             sftp_endpoint.local_video_dir.stat().st_gid)
    remote_moved = f"{section['remote_video_dir'].rstrip('/').rsplit('/', 1)[0]}/videos-moved"
    plugin.uploader_configure(config=validate(
        {"uploader": {"sftp": {**section, "remote_video_dir": remote_moved}}},
        plugin.uploader_config_sections()))

    receipt = send(plugin, following)

    assert receipt.remote_video_path == f"{remote_moved}/evt_two.mp4"
    assert (moved / "evt_two.mp4").read_bytes() == following.video_path.read_bytes()
    assert looked_ahead(plugin) == (0, 1)
    assert plugin.connections_made == 1  # the connection's own settings did not change
    assert files_open_under(sftp_endpoint.local_video_dir, moved) == []


def test_an_open_sent_ahead_that_the_server_refuses_fails_its_own_job_with_the_same_message(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(sftp_endpoint.config_section())
    first, blocked = write_job(tmp_path, "evt_first", 200_000), \
        write_job(tmp_path, "evt_blocked", 200_000)
    # A directory where the video's temporary file would go: the server refuses the open.
    obstacle = sftp_endpoint.local_video_dir / ".evt_blocked.mp4.part"
    obstacle.mkdir()
    local = {p: p.read_bytes() for p in (blocked.video_path, blocked.json_path)}

    # The refusal belongs to the job it was sent for, not to the one that sent it.
    assert_uploaded(sftp_endpoint.endpoint, send(plugin, first, lambda: blocked), first,
                    opened_ahead=blocked)
    with pytest.raises(UploaderError) as ahead:
        send(plugin, blocked)
    with pytest.raises(UploaderError) as direct:  # the same job, without a lookahead
        send(plugin, blocked)

    assert looked_ahead(plugin)[0] == 1
    assert ".evt_blocked.mp4.part" in str(ahead.value)
    assert type(ahead.value) is type(direct.value)
    assert str(ahead.value) == str(direct.value)
    assert {p: p.read_bytes() for p in local} == local  # the plugin only reads them
    print(f"\nrefused open, sent ahead: {ahead.value}")


def test_an_unused_opening_whose_video_open_was_refused_still_closes_the_json(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(sftp_endpoint.config_section())
    first, blocked, instead = (write_job(tmp_path, name, 200_000)
                               for name in ("evt_first", "evt_blocked", "evt_instead"))
    (sftp_endpoint.local_video_dir / ".evt_blocked.mp4.part").mkdir()
    local = {p: p.read_bytes() for p in (blocked.video_path, blocked.json_path)}
    send(plugin, first, lambda: blocked)
    held = files_open_under(sftp_endpoint.local_video_dir, sftp_endpoint.local_json_dir)
    assert [Path(p).name for p in held] == [".evt_blocked.json.part"]

    # Another job comes next: the refusal is nobody's error, and the JSON's handle is closed.
    assert_uploaded(sftp_endpoint.endpoint, send(plugin, instead), instead,
                    opened_ahead=blocked)

    assert looked_ahead(plugin) == (0, 1)
    assert plugin.connections_made == 1
    assert files_open_under(sftp_endpoint.local_video_dir, sftp_endpoint.local_json_dir) == []
    assert {p: p.read_bytes() for p in local} == local  # the expected job's files stay as they were
