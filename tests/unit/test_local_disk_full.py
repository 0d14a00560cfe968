"""A full archive filesystem: nothing lost, a clear error, the engine keeps going."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from engine_rig import Rig, all_bytes

from uploader_core import Outcome, Phase
from uploader_core.testing import write_package


@pytest.fixture
def small_archive(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs to archive into: a different filesystem from the pending directory."""
    mount_point = tmp_path / "uploaded"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_full_archive_filesystem_keeps_files_pending_and_uploads_the_rest(
    make_rig: Callable[..., Rig], small_archive: Path, tmp_path: Path
) -> None:
    rig = make_rig()
    write_package(rig.pending, "evt_fits", video=600_000, age_seconds=30)
    write_package(rig.pending, "evt_too_big", video=600_000, age_seconds=20)
    write_package(rig.pending, "evt_small", video=1_000, age_seconds=10)
    before = all_bytes(rig.pending)

    results = {r.event_id: r for r in rig.engine.run_once()}

    assert results["evt_fits"].outcome is Outcome.COMPLETED
    blocked = results["evt_too_big"]
    assert (blocked.outcome, blocked.phase) == (Outcome.RETRY, Phase.ARCHIVE)
    assert "No space left on device" in (blocked.reason or "")
    assert "uploader.uploaded_dir" in (blocked.reason or "")
    assert results["evt_small"].outcome is Outcome.COMPLETED, "the engine keeps going"
    assert [p.name for p in small_archive.iterdir() if p.name.startswith(".")] == []
    assert all_bytes(rig.pending) | all_bytes(small_archive) == before, "nothing lost"

    # Space comes back (an operator moves old archives away): archived, not uploaded again.
    uploads = rig.remote.uploads
    elsewhere = tmp_path / "offloaded"
    elsewhere.mkdir()
    for name in ("evt_fits.mp4", "evt_fits.json"):
        shutil.move(small_archive / name, elsewhere / name)
    [again] = rig.engine.run_once()
    assert again.outcome is Outcome.COMPLETED
    assert rig.remote.uploads == uploads
    assert all_bytes(small_archive) | all_bytes(elsewhere) == before
