"""Finding the jobs in the pending directory: which files, in which order, measured how far."""

from __future__ import annotations

import os
from pathlib import Path

from uploader_core.scanner import scan


def package(pending: Path, stem: str, mtime: int, video: int | None = 100) -> None:
    if video is not None:
        (pending / f"{stem}.mp4").write_bytes(b"v" * video)
    trigger = pending / f"{stem}.json"
    trigger.write_bytes(b"{}")
    os.utime(trigger, ns=(mtime, mtime))


def test_triggers_come_oldest_first_then_by_name(tmp_path: Path) -> None:
    package(tmp_path, "cam-b", 2_000)
    package(tmp_path, "cam-c", 1_000)
    package(tmp_path, "cam-a", 2_000)

    found = scan(tmp_path)

    assert [c.stem for c in found] == ["cam-c", "cam-a", "cam-b"]
    assert [c.json_mtime_ns for c in found] == [1_000, 2_000, 2_000]
    assert found[0].json_path == tmp_path / "cam-c.json"
    assert found[0].video_path == tmp_path / "cam-c.mp4"
    assert found[0].since == 1_000 / 1e9


def test_only_visible_json_files_with_a_name_are_triggers(tmp_path: Path) -> None:
    package(tmp_path, "evt", 1_000)
    (tmp_path / ".evt2.json").write_bytes(b"{}")  # another program's temporary file
    (tmp_path / ".json").write_bytes(b"{}")
    (tmp_path / "evt3.mp4").write_bytes(b"a video without its trigger")
    (tmp_path / "notes.txt").write_bytes(b"")

    assert [c.stem for c in scan(tmp_path)] == ["evt"]


def test_sizes_count_the_video_only_when_it_is_a_regular_file(tmp_path: Path) -> None:
    package(tmp_path, "with-video", 1_000, video=100)
    package(tmp_path, "no-video", 2_000, video=None)
    package(tmp_path, "odd-video", 3_000, video=None)
    (tmp_path / "odd-video.mp4").mkdir()

    sizes = {c.stem: (c.json_size, c.video_size, c.size) for c in scan(tmp_path)}

    assert sizes == {"with-video": (2, 100, 102), "no-video": (2, 0, 2),
                     "odd-video": (2, 0, 2)}


def test_only_the_first_videos_are_measured(tmp_path: Path) -> None:
    for i in range(5):
        package(tmp_path, f"evt{i}", 1_000 + i, video=10 + i)

    found = scan(tmp_path, measure_videos=2)

    assert [c.video_size for c in found] == [10, 11, 0, 0, 0]
