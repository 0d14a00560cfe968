"""The TUI driven with Pilot against a real engine and a real control socket, at 80x24."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from textual.widgets import ProgressBar, RichLog, Static, TabbedContent
from tui_engine import LiveEngine
from tui_waiting import wait_for

from uploader_core.control import ControlServer
from uploader_core.monitor import PendingJob
from uploader_core.testing import write_package
from uploader_tui.app import UploaderApp
from uploader_tui.components.confirm import ConfirmScreen
from uploader_tui.components.detail import DetailScreen
from uploader_tui.components.offline import OfflineNotice
from uploader_tui.components.tables import KeyedTable

SIZE = (80, 24)
NAN_DOCUMENT = b'{"eventId": "evt_bad", "x": NaN}'


def table(app: UploaderApp, name: str) -> KeyedTable[Any]:
    return app.query_one(f"#{name}-table", KeyedTable)


def cell_text(app: UploaderApp, name: str, key: str, column: str) -> str:
    """The cell's text, or "" while the row is not there."""
    if key not in table(app, name):
        return ""
    return str(table(app, name).get_cell(key, column))


def log_text(app: UploaderApp) -> str:
    return "\n".join(line.text for line in app.query_one("#log-view", RichLog).lines)


def static_text(app: UploaderApp, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


def run(scenario: Callable[[], Any]) -> None:
    asyncio.run(scenario())


def test_pending_uploaded_and_failed_views_follow_the_engine(
        make_engine: Callable[..., LiveEngine]) -> None:
    live = make_engine(retry={"initial_backoff_seconds": 600, "max_backoff_seconds": 600})
    write_package(live.pending, "evt_retry", age_seconds=100)
    write_package(live.pending, "evt_ok1", age_seconds=90)
    write_package(live.pending, "evt_ok2", age_seconds=80)
    write_package(live.pending, "evt_bad", document=NAN_DOCUMENT, age_seconds=70)
    live.remote.faults.fail_next(RuntimeError("glitch on the link"))
    live.engine.pause()  # until the TUI is attached, so that its log sees it all live
    live.start()

    async def scenario() -> None:
        app = UploaderApp(live.socket)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.connected, "the connection")
            live.engine.resume()
            await wait_for(pilot, lambda: len(table(app, "uploaded").keys()) == 2,
                           "two uploads")
            await wait_for(pilot, lambda: "evt_bad" in table(app, "failed"), "the failure")
            await wait_for(pilot, lambda: "glitch" in cell_text(app, "pending", "evt_retry",
                                                                   "status"),
                           "the pending job's last error")
            assert table(app, "pending").keys() == ["evt_retry"]
            # An event racing the snapshot that already counts it is set right by the next.
            await wait_for(pilot, lambda: cell_text(app, "pending", "evt_retry", "tries") == "1",
                           "one try")
            assert "NaN" in cell_text(app, "failed", "evt_bad", "reason")
            tabs = app.query_one(TabbedContent)
            assert [str(tabs.get_tab(n).label) for n in ("pending", "uploaded", "failed")] \
                == ["Pending 1", "Uploaded 2", "Failed 1"]
            assert "pending 1" in static_text(app, "#status-line")
            await pilot.press("4")  # the log renders once it is shown
            await wait_for(pilot, lambda: "FAILED  evt_bad" in log_text(app), "the log")
            assert "RETRY   evt_retry (transfer): glitch on the link" in log_text(app)

    run(scenario)


def test_a_transfer_in_flight_shows_progress_rate_and_eta(
        make_engine: Callable[..., LiveEngine]) -> None:
    live = make_engine()
    release = threading.Event()

    seen: dict[str, int] = {}

    def halfway(job: Any) -> None:  # on the engine's thread, inside transfer_files
        total = seen["total"] = job.video_size + job.json_size
        live.engine.monitor.progress(job.event_id, total // 2, total)
        release.wait(30)

    live.remote.during_transfer = halfway
    write_package(live.pending, "evt_big", video=400_000)
    live.start()

    async def scenario() -> None:
        app = UploaderApp(live.socket)
        async with app.run_test(size=SIZE) as pilot:
            bar = app.query_one("#transfer-bar", ProgressBar)
            try:
                await wait_for(pilot,
                               lambda: bar.display and abs((bar.percentage or 0) - 0.5) < 0.01,
                               "the progress bar at 50%")
                assert "evt_big" in static_text(app, "#transfer-label")
                rate = static_text(app, "#transfer-rate")
                assert "/s" in rate and "ETA" in rate
                percent = 100 * (seen["total"] // 2) // seen["total"]  # 49 or 50
                assert cell_text(app, "pending", "evt_big", "status") == f"uploading {percent}%"
            finally:
                release.set()
            await wait_for(pilot, lambda: "evt_big" in table(app, "uploaded"), "the upload")
            await wait_for(pilot, lambda: not bar.display, "the bar to go")
            assert "no transfer" in static_text(app, "#transfer-label")

    try:
        run(scenario)
    finally:
        release.set()


def test_scan_now_pause_and_resume_keys_command_the_engine(
        make_engine: Callable[..., LiveEngine]) -> None:
    live = make_engine(scan_interval_seconds=3600)
    live.start()

    async def scenario() -> None:
        app = UploaderApp(live.socket)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.engine_state == "idle", "the engine to idle")
            write_package(live.pending, "evt_now")
            await pilot.press("s")  # without it the next pass is an hour away
            await wait_for(pilot, lambda: "evt_now" in table(app, "uploaded"), "the upload")
            await pilot.press("p")
            await wait_for(pilot, lambda: live.engine.paused and app.engine_state == "paused",
                           "pause")
            assert "paused" in static_text(app, "#status-line")
            await pilot.press("p")
            await wait_for(pilot, lambda: not live.engine.paused, "resume")
            await wait_for(pilot, lambda: app.engine_state != "paused", "the state to follow")

    run(scenario)


def test_retry_selected_skips_the_backoff(make_engine: Callable[..., LiveEngine]) -> None:
    live = make_engine(retry={"initial_backoff_seconds": 600, "max_backoff_seconds": 600})
    write_package(live.pending, "evt_r")
    live.remote.faults.fail_next(RuntimeError("glitch"))
    live.start()

    async def scenario() -> None:
        app = UploaderApp(live.socket)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: "glitch" in cell_text(app, "pending", "evt_r",
                                                                   "status"), "the retry")
            await pilot.press("r")  # the cursor is on the only row
            await wait_for(pilot, lambda: "evt_r" in table(app, "uploaded"),
                           "the upload, without waiting 600 s")
            assert "evt_r" not in table(app, "pending")

    run(scenario)


def test_requeue_asks_before_it_moves_files(make_engine: Callable[..., LiveEngine]) -> None:
    live = make_engine()
    write_package(live.pending, "evt_bad", document=NAN_DOCUMENT)
    live.start()

    async def scenario() -> None:
        app = UploaderApp(live.socket)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: "evt_bad" in table(app, "failed"), "the failure")
            (live.failed / "evt_bad.json").write_bytes(b'{"eventId": "evt_bad"}')  # fixed
            await pilot.press("3")
            await pilot.press("u")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
            await pilot.press("n")
            await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "no")
            assert (live.failed / "evt_bad.json").exists()  # nothing moved
            await pilot.press("u")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
            await pilot.press("y")
            await wait_for(pilot, lambda: "evt_bad" in table(app, "uploaded"), "the upload")
            assert "evt_bad" not in table(app, "failed")
            await pilot.press("4")
            await wait_for(pilot, lambda: "REQUEUE evt_bad" in log_text(app), "the log")

    run(scenario)


def test_the_detail_view_shows_attempts_errors_and_metadata(
        make_engine: Callable[..., LiveEngine]) -> None:
    live = make_engine()
    write_package(live.pending, "evt_d")
    live.remote.faults.fail_next(RuntimeError("first try failed"))
    live.start()

    async def scenario() -> None:
        app = UploaderApp(live.socket)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: "evt_d" in table(app, "uploaded"), "the upload")
            await pilot.press("2", "enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen), "the details")
            text = str(app.screen.query_one("#detail-text", Static).render())
            assert "uploaded and archived" in text
            assert "retry in transfer: first try failed" in text
            assert "completed" in text
            assert '"deviceId": "cam03"' in text
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, DetailScreen), "back")

    run(scenario)


def test_without_an_engine_it_says_how_to_start_one_and_reconnects(
        make_engine: Callable[..., LiveEngine]) -> None:
    live = make_engine()

    async def scenario() -> None:
        app = UploaderApp(live.socket, start_hint="start it with: uploader run -c site.yaml")
        async with app.run_test(size=SIZE) as pilot:
            notice = app.query_one(OfflineNotice)
            await wait_for(pilot, lambda: notice.display, "the notice")
            text = str(notice.render())
            assert "not running" in text
            assert "uploader run -c site.yaml" in text
            assert str(live.socket) in text
            assert "not running" in static_text(app, "#status-line")
            live.start()
            await wait_for(pilot, lambda: not notice.display and app.connected,
                           "the reconnection")
            write_package(live.pending, "evt_back")
            await wait_for(pilot, lambda: "evt_back" in table(app, "uploaded"), "an upload")
            live.stop()
            await wait_for(pilot, lambda: notice.display, "the notice, again")

    run(scenario)


def test_ten_thousand_pending_events_are_updated_in_place(
        make_engine: Callable[..., LiveEngine]) -> None:
    live = make_engine()
    monitor = live.engine.monitor
    jobs = [PendingJob(f"evt_{i:05d}", 1000 + i, 1.7e9 + i) for i in range(10_000)]
    monitor.pass_started(jobs)
    live.server = ControlServer(live.engine, live.socket)
    live.server.start()  # the socket only: the engine's own passes would empty the list

    async def scenario() -> None:
        app = UploaderApp(live.socket)
        async with app.run_test(size=SIZE) as pilot:
            pending = table(app, "pending")
            await wait_for(pilot, lambda: pending.row_count == 10_000, "10,000 rows", 60)
            calls = {"add_row": 0, "remove_row": 0, "update_cell": 0}
            for name in calls:
                original = getattr(pending, name)

                def counting(*args: Any, __name: str = name, __original: Any = original,
                             **kwargs: Any) -> Any:
                    calls[__name] += 1
                    return __original(*args, **kwargs)

                setattr(pending, name, counting)
            monitor.retry("evt_00005", "transfer", "timeout")
            monitor.completed("evt_00007", 1007, 0.1)
            monitor.pass_started([*jobs[:7], *jobs[8:], PendingJob("evt_new", 5, 1.8e9)])
            await wait_for(pilot, lambda: "evt_new" in pending, "the next pass's snapshot")
            await wait_for(pilot, lambda: pending.row_count == 10_000, "the row count")
            assert calls == {"add_row": 1, "remove_row": 1, "update_cell": 2}
            started = time.monotonic()
            await pilot.press("ctrl+end")
            await wait_for(pilot, lambda: pending.cursor_row == 9_999, "the cursor")
            assert time.monotonic() - started < 2.0

    run(scenario)
