"""Snapshots of the main screens at 80x24, fed fixed data through the feed's own messages.

Update them after an intended change with ``pytest tests/tui --snapshot-update`` and look at
the report before committing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from uploader_tui.app import UploaderApp
from uploader_tui.messages import Connected, Disconnected, EngineEvents, JobDetailReady

pytestmark = pytest.mark.usefixtures("utc")

NOW = 1_795_867_200.0  # 2026-11-28 12:00:00 UTC
SOCKET = "/var/lib/uploader/uploader.sock"
CAM = "evt_20261128T0{:03d}00Z_cam03_{:04d}"

SNAPSHOT: dict[str, Any] = {
    "time": NOW,
    "state": "running",
    "pending_count": 4,
    "pending": [
        {"event_id": CAM.format(715, 41), "size": 3_000_412, "age": 6300.0, "attempts": 2,
         "last_error": "cannot connect to 10.0.0.9:5432: connection refused"},
        {"event_id": CAM.format(716, 42), "size": 24_118_230, "age": 6240.0, "attempts": 0,
         "last_error": None},
        {"event_id": CAM.format(717, 43), "size": 1_204_002, "age": 6180.0, "attempts": 0,
         "last_error": None},
        {"event_id": CAM.format(718, 44), "size": 812_551, "age": 120.0, "attempts": 0,
         "last_error": None},
    ],
    "recent": [
        {"event_id": CAM.format(714, 40), "time": NOW - 600, "bytes": 5_100_200,
         "duration": 2.4},
        {"event_id": CAM.format(713, 39), "time": NOW - 1200, "bytes": 4_800_300,
         "duration": 2.1},
    ],
    "quarantined": [
        {"event_id": CAM.format(712, 38), "time": NOW - 1800, "phase": "read",
         "reason": "JSON contains NaN, which is not valid JSON and jsonb refuses"},
        {"event_id": CAM.format(711, 37), "time": NOW - 3600, "phase": "read",
         "reason": "video evt_..._0037.mp4 is empty"},
    ],
    "endpoints": {"sftp": {"up": True, "reason": "", "since": NOW - 600},
                  "database": {"up": False, "reason": "connection refused", "since": NOW - 60}},
    "transfer": {"event_id": CAM.format(716, 42), "done": 9_647_292, "total": 24_118_230,
                 "rate": 1_850_000.0, "eta": 7.8, "started": NOW - 5},
    "last_pass": {"finished": NOW - 30, "completed": 2, "retry": 1, "quarantined": 0,
                  "waiting": 0},
    "totals": {"completed": 2, "quarantined": 2, "retries": 3, "bytes_sent": 9_900_500},
}

EVENTS: list[dict[str, Any]] = [
    {"kind": "endpoint", "time": NOW - 60, "event_id": None, "endpoint": "database",
     "up": False, "reason": "connection refused"},
    {"kind": "retry", "time": NOW - 60, "event_id": CAM.format(715, 41),
     "phase": "store_metadata", "reason": "cannot connect to 10.0.0.9:5432: connection refused"},
    {"kind": "state", "time": NOW - 30, "event_id": None, "state": "paused"},
    {"kind": "state", "time": NOW - 20, "event_id": None, "state": "running"},
]

DETAIL: dict[str, Any] = {
    "event_id": CAM.format(715, 41),
    "pending": {"size": 3_000_412, "since": NOW - 6300},
    "attempts": 3,
    "last_error": "cannot connect to 10.0.0.9:5432: connection refused",
    "quarantined": None,
    "history": [
        {"time": NOW - 300, "outcome": "retry", "phase": "transfer",
         "reason": "SFTP server closed the connection"},
        {"time": NOW - 60, "outcome": "retry", "phase": "store_metadata",
         "reason": "cannot connect to 10.0.0.9:5432: connection refused"},
    ],
    "location": "pending",
    "metadata": {"eventId": CAM.format(715, 41), "deviceId": "cam03",
                 "site": "north-meadow", "detections": [{"species": "red fox",
                                                         "confidence": 0.91}]},
    "metadata_error": None,
    "error_report": None,
}

Compare = Callable[..., bool]


def attached(*then: Any) -> Callable[[Pilot[None]], Awaitable[None]]:
    """A ``run_before`` that attaches the app to the fixed engine state, then posts ``then``."""
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        app.post_message(Connected(SNAPSHOT))
        app.post_message(EngineEvents(EVENTS))
        for message in then:
            app.post_message(message)
        await pilot.pause()

    return run_before


def app() -> UploaderApp:
    return UploaderApp(SOCKET, connect=False)


def test_pending_view(snap_compare: Compare) -> None:
    assert snap_compare(app(), run_before=attached())


def test_uploaded_view(snap_compare: Compare) -> None:
    assert snap_compare(app(), press=["2"], run_before=attached())


def test_failed_view(snap_compare: Compare) -> None:
    assert snap_compare(app(), press=["3"], run_before=attached())


def test_log_view(snap_compare: Compare) -> None:
    assert snap_compare(app(), press=["4"], run_before=attached())


def test_requeue_confirmation(snap_compare: Compare) -> None:
    assert snap_compare(app(), press=["3", "u"], run_before=attached())


def test_detail_view(snap_compare: Compare) -> None:
    assert snap_compare(app(), run_before=attached(JobDetailReady(DETAIL)))


def test_engine_not_running(snap_compare: Compare) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        pilot.app.post_message(Disconnected(
            f"the uploader is not running (no socket: {SOCKET}); start it with: "
            "uploader run -c /etc/uploader.yaml", True))
        await pilot.pause()

    assert snap_compare(app(), run_before=run_before)
