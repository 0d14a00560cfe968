"""Archive moves: when their directory fsyncs happen, alone and shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from uploader_core import filing


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The directories fsynced, by name, in order (and what else the test notes there)."""
    log: list[str] = []
    real = filing.fsync_dir

    def fsync_dir(directory: Path) -> None:
        log.append(f"fsync:{directory.name}")
        real(directory)

    monkeypatch.setattr(filing, "fsync_dir", fsync_dir)
    return log


def files(directory: Path, *names: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(name.encode() * 100)
    return [directory / name for name in names]


def test_a_move_alone_syncs_the_destination_then_the_source(
    tmp_path: Path, synced: list[str]
) -> None:
    (video,) = files(tmp_path / "pending", "evt_1.mp4")

    dest = filing.move_into(video, tmp_path / "uploaded")

    assert dest == tmp_path / "uploaded" / "evt_1.mp4"
    assert dest.read_bytes() == b"evt_1.mp4" * 100
    assert synced == ["fsync:uploaded", "fsync:pending"]


def test_moves_sharing_syncs_are_synced_once_per_directory_at_the_flush(
    tmp_path: Path, synced: list[str]
) -> None:
    moved = files(tmp_path / "pending", "evt_1.mp4", "evt_2.mp4", "evt_3.mp4")
    syncs = filing.DirectorySyncs()

    for path in moved:
        filing.move_into(path, tmp_path / "uploaded", syncs)
    assert synced == [], "nothing is synced before the flush"
    syncs.flush()
    syncs.flush()

    assert synced == ["fsync:uploaded", "fsync:pending"]
    assert sorted(p.name for p in (tmp_path / "uploaded").iterdir()) == [
        "evt_1.mp4", "evt_2.mp4", "evt_3.mp4"]
    assert list((tmp_path / "pending").iterdir()) == []


def test_a_move_back_into_a_directory_left_earlier_first_flushes_the_moves_before_it(
    tmp_path: Path, synced: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (there,) = files(tmp_path / "a", "one.json")
    (back,) = files(tmp_path / "b", "two.json")
    real_rename = os.rename

    def rename(src: Path, dest: Path) -> None:
        synced.append(f"rename:{Path(src).name}")
        real_rename(src, dest)

    monkeypatch.setattr(os, "rename", rename)
    syncs = filing.DirectorySyncs()

    filing.move_into(there, tmp_path / "b", syncs)
    filing.move_into(back, tmp_path / "a", syncs)
    syncs.flush()

    # Synced the other way round, a's fsync would make two.json's arrival durable after
    # b's had made its departure durable: a power cut between them would lose it.
    assert synced == ["rename:one.json", "fsync:b", "fsync:a",
                      "rename:two.json", "fsync:a", "fsync:b"]


def test_the_copy_an_interrupted_move_left_is_synced_before_the_original_goes(
    tmp_path: Path, synced: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (video,) = files(tmp_path / "pending", "evt_1.mp4")
    files(tmp_path / "uploaded", "evt_1.mp4")  # the same bytes, not yet known to be durable
    real_unlink = os.unlink

    def unlink(path: Path) -> None:
        synced.append(f"unlink:{Path(path).parent.name}/{Path(path).name}")
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", unlink)
    syncs = filing.DirectorySyncs()

    dest = filing.move_into(video, tmp_path / "uploaded", syncs)
    syncs.flush()

    assert dest.read_bytes() == b"evt_1.mp4" * 100
    assert not video.exists()
    assert synced[:2] == ["fsync:uploaded", "unlink:pending/evt_1.mp4"]
    assert synced[-1] == "fsync:pending"
