"""Every malformed or hostile package gets a specific reason, keeps its bytes, and never stops
the valid events beside it from uploading."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from engine_rig import Rig, visible

from uploader_core import Outcome
from uploader_core.testing import sample_document, write_package

Maker = Callable[[Path], None]


def doc_bytes(data: bytes) -> Maker:
    def make(pending: Path) -> None:
        write_package(pending, "evt_bad", document=data)
    return make


def video_kind(kind: str) -> Maker:
    def make(pending: Path) -> None:
        write_package(pending, "evt_bad")
        video = pending / "evt_bad.mp4"
        video.unlink()
        if kind == "empty":
            video.write_bytes(b"")
        elif kind == "symlink":
            secret = pending.parent / "secret.key"
            secret.write_bytes(b"top secret")
            video.symlink_to(secret)
        elif kind == "directory":
            video.mkdir()
        elif kind == "fifo":
            os.mkfifo(video)
        old = os.stat(pending / "evt_bad.json").st_mtime
        os.utime(video, (old, old), follow_symlinks=False)
    return make


def named(stem: str) -> Maker:
    def make(pending: Path) -> None:
        write_package(pending, stem, document={"note": "id from the file name"})
    return make


def json_symlink(pending: Path) -> None:
    write_package(pending, "evt_bad")
    target = pending.parent / "elsewhere.json"
    target.write_bytes(b'{"eventId": "evt_bad"}')
    (pending / "evt_bad.json").unlink()
    (pending / "evt_bad.json").symlink_to(target)


deep = b'{"a":' * 300 + b"1" + b"}" * 300

CASES: dict[str, tuple[Maker, str]] = {
    "truncated JSON": (doc_bytes(b'{"eventId": "evt_bad", "site": "no'), "not valid JSON"),
    "JSON array": (doc_bytes(b"[1, 2, 3]"), "must hold a JSON object, not list"),
    "JSON string": (doc_bytes(b'"just text"'), "must hold a JSON object, not str"),
    "JSON null": (doc_bytes(b"null"), "not null"),
    "invalid UTF-8": (doc_bytes(b'{"site": "caf\xe9"}'), "not valid UTF-8"),
    "NUL character": (doc_bytes(b'{"site": "a\\u0000b"}'), "NUL character"),
    "unpaired surrogate": (doc_bytes(b'{"site": "\\ud800"}'), "unpaired surrogate"),
    "NaN": (doc_bytes(b'{"confidence": NaN}'), "NaN"),
    "Infinity": (doc_bytes(b'{"confidence": -Infinity}'), "-Infinity"),
    "huge number": (doc_bytes(b'{"confidence": 1e999}'), "out of range"),
    "deep nesting": (doc_bytes(deep), "nested more than"),
    "duplicate keys": (doc_bytes(b'{"site": "a", "site": "b"}'), "key 'site' twice"),
    "mismatched eventId": (doc_bytes(b'{"eventId": "evt_other"}'), "does not match"),
    "over the size cap": (doc_bytes(b'{"pad": "' + b"x" * 70_000 + b'"}'),
                          "over the limit of 65536"),
    "empty video": (video_kind("empty"), "is empty"),
    "symlinked video": (video_kind("symlink"), "symbolic link"),
    "video is a directory": (video_kind("directory"), "is a directory"),
    "video is a FIFO": (video_kind("fifo"), "not a regular file"),
    "JSON is a symlink": (json_symlink, "symbolic link"),
    "id with a space": (named("evt bad"), "is not valid"),
    "id with unicode": (named("évt_bad"), "is not valid"),
    "id starting with a dash": (named("-evt_bad"), "is not valid"),
    "id over 128 characters": (named("e" * 129), "is not valid"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_package_is_quarantined_with_its_reason_and_bytes(
    make_rig: Callable[..., Rig], case: str
) -> None:
    rig = make_rig(max_metadata_bytes=65536)
    make, expected = CASES[case]
    write_package(rig.pending, "evt_good_1", age_seconds=120)
    make(rig.pending)
    write_package(rig.pending, "evt_good_2", age_seconds=1)
    bad = {p.name: (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
           for p in rig.pending.iterdir()
           if not p.name.startswith(("evt_good", "."))}

    results = {r.event_id: r for r in rig.engine.run_once()}

    assert results["evt_good_1"].outcome is Outcome.COMPLETED
    assert results["evt_good_2"].outcome is Outcome.COMPLETED
    [quarantined] = [r for r in results.values() if r.outcome is Outcome.QUARANTINED]
    assert expected in (quarantined.reason or ""), quarantined.reason
    for name, content in bad.items():
        moved = rig.failed / name
        assert os.path.lexists(moved), f"{name} was not kept"
        if content is not None:
            assert moved.read_bytes() == content
    report_name = next(p for p in rig.failed.iterdir() if p.name.endswith(".error.json"))
    report = json.loads(report_name.read_text())
    assert expected in report["reason"]
    assert visible(rig.pending) == []


def test_byte_order_mark_is_accepted_and_uploaded_unchanged(rig: Rig) -> None:
    data = b"\xef\xbb\xbf" + json.dumps(sample_document("evt_bom")).encode()
    write_package(rig.pending, "evt_bom", document=data)
    [result] = rig.engine.run_once()
    assert result.outcome is Outcome.COMPLETED
    assert rig.remote.files["/json/evt_bom.json"] == data
    assert rig.store.records["evt_bom"].metadata["site"] == "north-meadow"


def test_document_without_event_id_takes_it_from_the_file_name(rig: Rig) -> None:
    write_package(rig.pending, "evt_noid", document={"site": "x"})
    [result] = rig.engine.run_once()
    assert result.outcome is Outcome.COMPLETED


def test_packages_differing_only_by_case_are_distinct_events(rig: Rig) -> None:
    write_package(rig.pending, "evt_case", video=10)
    write_package(rig.pending, "EVT_CASE", video=20)
    results = {r.event_id: r.outcome for r in rig.engine.run_once()}
    assert results == {"evt_case": Outcome.COMPLETED, "EVT_CASE": Outcome.COMPLETED}
    assert len(rig.remote.files["/videos/EVT_CASE.mp4"]) == 20


def test_large_document_with_hundreds_of_detections_is_accepted(rig: Rig) -> None:
    write_package(rig.pending, "evt_big", document=sample_document("evt_big", detections=800))
    [result] = rig.engine.run_once()
    assert result.outcome is Outcome.COMPLETED
    assert len(rig.store.records["evt_big"].metadata["detections"]) == 800
