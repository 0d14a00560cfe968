"""The uploader's terminal user interface: what is waiting, what went up, what failed and why.

The application never blocks: one thread worker (:class:`~uploader_tui.feed.EngineFeed`)
reads the engine's control socket and posts messages; each command the person gives runs in
a short thread worker of its own. Every worker failure ends in :meth:`on_worker_state_changed`,
which shows it as a notification.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, RichLog, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from uploader_core import control_client
from uploader_core.control_client import START_HINT

from .components.confirm import ConfirmScreen
from .components.detail import DetailScreen
from .components.header import EngineHeader
from .components.offline import OfflineNotice
from .components.tables import KeyedTable
from .feed import EngineFeed
from .messages import (
    CommandDone,
    Connected,
    Disconnected,
    EngineEvents,
    JobDetailReady,
    SnapshotReceived,
)
from .model import (
    PHASE_WORDS,
    PendingJob,
    failed_cells,
    history_lines,
    log_line,
    pending_jobs,
    uploaded_cells,
    uploading,
)

PENDING_COLUMNS = [("Event", "event", 31), ("Size", "size", 8), ("Since", "since", 8),
                   ("Tries", "tries", 5), ("Status", "status", None)]
UPLOADED_COLUMNS = [("Event", "event", 31), ("Size", "size", 8), ("At", "time", 8),
                    ("Took", "took", 10)]
# 31 + 8 + 33 and two cells of padding each, with the scrollbar: 80 columns.
FAILED_COLUMNS = [("Event", "event", 31), ("At", "time", 8), ("Reason", "reason", 33)]
TAB_TITLES = {"pending": "Pending", "uploaded": "Uploaded", "failed": "Failed"}
COMMAND_TIMEOUT = 10.0
LOG_LINES = 2000
EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class UploaderApp(App[None]):
    """Attach to the engine listening on ``socket_path``.

    ``start_hint`` is shown, with the path, while no engine answers. ``connect=False`` starts
    without the socket thread: tests then post the feed's messages themselves.
    """

    CSS_PATH = "uploader.tcss"
    TITLE = "Uploader"
    ENABLE_COMMAND_PALETTE = False  # its footer entry costs space an 80-column screen needs
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "scan_now", "Scan"),
        Binding("p", "toggle_pause", "Pause/Resume"),
        Binding("r", "retry", "Retry"),
        Binding("u", "requeue", "Requeue"),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("1", "show_tab('pending')", show=False),
        Binding("2", "show_tab('uploaded')", show=False),
        Binding("3", "show_tab('failed')", show=False),
        Binding("4", "show_tab('log')", show=False),
    ]

    def __init__(self, socket_path: str | os.PathLike[str], *, start_hint: str = START_HINT,
                 connect: bool = True, exit_on_signals: bool = False) -> None:
        super().__init__()
        self.socket_path = Path(socket_path)
        self.start_hint = start_hint
        self.connected = False
        self.engine_state = "connecting"
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, PendingJob] = {}
        self.active_job: str | None = None  # the job the engine works on, from its events
        self._connect = connect
        self._attached_before = False
        self._exit_on_signals = exit_on_signals
        self._feed = EngineFeed(self.socket_path, self.post_message, start_hint)

    # --- layout

    # Made by compose and kept, never queried: a query looks at the screen on top, which may
    # be a dialog or the detail view while the engine's events keep coming.
    header: EngineHeader
    notice: OfflineNotice
    tabs: TabbedContent
    tables: dict[str, KeyedTable[Any]]
    log_view: RichLog

    def compose(self) -> ComposeResult:
        self.header = EngineHeader()
        self.notice = OfflineNotice()
        self.tabs = TabbedContent(initial="pending")
        self.tables = {
            "pending": KeyedTable(PENDING_COLUMNS, PendingJob.cells, id="pending-table"),
            "uploaded": KeyedTable(UPLOADED_COLUMNS, uploaded_cells, id="uploaded-table"),
            "failed": KeyedTable(FAILED_COLUMNS, failed_cells, id="failed-table",
                                 row_height=None),
        }
        self.log_view = RichLog(max_lines=LOG_LINES, wrap=True, markup=False, id="log-view")
        yield self.header
        yield self.notice
        with self.tabs:
            with TabPane("Pending", id="pending"):
                yield self.tables["pending"]
            with TabPane("Uploaded", id="uploaded"):
                yield self.tables["uploaded"]
            with TabPane("Failed", id="failed"):
                yield self.tables["failed"]
            with TabPane("Log", id="log"):
                yield self.log_view
        yield Footer()

    def on_mount(self) -> None:
        self.tables["pending"].focus()
        if self._connect:
            self._follow_engine()
        if self._exit_on_signals:
            # SIGHUP is an SSH session that dropped: leave the terminal (and let whoever ran
            # the app clean up) rather than die where we stand.
            loop = asyncio.get_running_loop()
            for sig in EXIT_SIGNALS:
                loop.add_signal_handler(sig, self.exit)

    def on_unmount(self) -> None:
        # The feed's thread runs in the event loop's executor, which is waited for on exit.
        self._feed.stop()
        if self._exit_on_signals:
            loop = asyncio.get_running_loop()
            for sig in EXIT_SIGNALS:
                loop.remove_signal_handler(sig)

    @work(thread=True, exclusive=True, exit_on_error=False, group="feed",
          name="connection to the engine")
    def _follow_engine(self) -> None:
        self._feed.run()

    # --- widgets

    def _table(self, name: str) -> KeyedTable[Any]:
        return self.tables[name]

    def _note(self, line: str) -> None:
        self.log_view.write(Text(line))

    def _active_tab(self) -> str:
        return self.tabs.active

    def _update_counts(self) -> None:
        # Only what changed: a label set re-lays the tabs out, and a busy engine sends
        # dozens of events a second.
        for name, title in TAB_TITLES.items():
            label = f"{title} {self._table(name).row_count}"
            tab = self.tabs.get_tab(name)
            if str(tab.label) != label:
                tab.label = label
        self.header.show_status(counts=(len(self.pending), self._table("failed").row_count))

    def _set_state(self, state: str) -> None:
        paused_before = self.engine_state == "paused"
        self.engine_state = state
        self.header.show_status(state=state)
        if paused_before != (state == "paused"):
            self.refresh_bindings()  # redraws the footer: not for every running/idle flip

    # --- what the feed says

    @property
    def _closing_down(self) -> bool:
        # The feed's last messages may arrive while the app tears its widgets down.
        return not self.is_running

    def on_connected(self, message: Connected) -> None:
        if self._closing_down:
            return
        first = not self._attached_before
        self.connected = self._attached_before = True
        self.notice.hide()
        self._note(f"attached to the engine at {self.socket_path}")
        if first:
            for line in history_lines(message.snapshot):
                self._note(line)
        self._apply_snapshot(message.snapshot)
        self.refresh_bindings()

    def on_disconnected(self, message: Disconnected) -> None:
        if self._closing_down:
            return
        if self.connected:
            self._note(message.reason)
        self.connected = False
        self.engine_state = "not running" if message.not_running else "connecting"
        self.header.show_status(state=self.engine_state)
        self.header.show_transfer(None)
        self.notice.show(message.reason, message.not_running)
        self.refresh_bindings()

    def on_snapshot_received(self, message: SnapshotReceived) -> None:
        if self._closing_down:
            return
        self._apply_snapshot(message.snapshot)

    def _apply_snapshot(self, snapshot: dict[str, Any]) -> None:
        self._set_state(str(snapshot.get("state")))
        self.endpoints = dict(snapshot.get("endpoints") or {})
        pending = pending_jobs(snapshot)
        current = self.pending.get(self.active_job or "")
        if current is not None and current.event_id in pending:
            pending[current.event_id].activity = current.activity
        transfer = snapshot.get("transfer")
        if transfer and transfer.get("event_id") in pending:
            self.active_job = str(transfer["event_id"])
            pending[self.active_job].activity = uploading(transfer)
        self.pending = pending
        self._table("pending").sync(pending)
        for name, items in (("uploaded", snapshot.get("recent")),
                            ("failed", snapshot.get("quarantined"))):
            if self._table(name).sync({str(item["event_id"]): item for item in items or ()}):
                self._table(name).sort_by_time("time")
        self.header.show_status(endpoints=self.endpoints)
        self.header.show_transfer(transfer)
        self._update_counts()

    def on_engine_events(self, message: EngineEvents) -> None:
        if self._closing_down:
            return
        touched: set[str] = set()
        for event in message.events:
            self._apply_event(event, touched)
            line = log_line(event)
            if line is not None:
                self._note(line)
        for name in touched:
            self._table(name).sort_by_time("time")
        self._update_counts()

    def _apply_event(self, event: dict[str, Any], touched: set[str]) -> None:
        kind, event_id = event.get("kind"), event.get("event_id")
        if kind == "state":
            self._set_state(str(event.get("state")))
        elif kind == "endpoint":
            name = str(event.get("endpoint"))
            self.endpoints[name] = {"up": event.get("up"), "reason": event.get("reason")}
            self.header.show_status(endpoints=self.endpoints)
        elif kind == "phase" and event_id is not None:
            self.active_job = str(event_id)
            self._set_activity(str(event_id), PHASE_WORDS.get(str(event.get("phase")),
                                                              str(event.get("phase"))))
        elif kind == "progress" and event_id is not None:
            self.active_job = str(event_id)
            self._set_activity(str(event_id), uploading(event))
            self.header.show_transfer(event)
        elif kind == "completed" and event_id is not None:
            self._finished(str(event_id))
            self._table("uploaded").upsert(str(event_id), {
                "event_id": event_id, "time": event.get("time"), "bytes": event.get("bytes"),
                "duration": event.get("duration")})
            touched.add("uploaded")
        elif kind == "retry" and event_id is not None:
            self._finished(str(event_id), keep=True)
            job = self.pending.get(str(event_id))
            if job is not None:
                self._replace(job, attempts=job.attempts + 1, last_error=event.get("reason"),
                              activity=None)
        elif kind == "quarantined" and event_id is not None:
            self._finished(str(event_id))
            self._table("failed").upsert(str(event_id), {
                "event_id": event_id, "time": event.get("time"), "phase": event.get("phase"),
                "reason": event.get("reason")})
            touched.add("failed")
        elif kind == "requeued" and event_id is not None:
            self._table("failed").discard(str(event_id))

    def _finished(self, event_id: str, keep: bool = False) -> None:
        if self.active_job == event_id:
            self.active_job = None
            self.header.show_transfer(None)
        if not keep and self.pending.pop(event_id, None) is not None:
            self._table("pending").discard(event_id)

    def _set_activity(self, event_id: str, activity: str) -> None:
        job = self.pending.get(event_id)
        if job is not None:
            self._replace(job, activity=activity)

    def _replace(self, job: PendingJob, **changes: Any) -> None:
        updated = PendingJob(**{**job.__dict__, **changes})
        self.pending[job.event_id] = updated
        self._table("pending").upsert(job.event_id, updated)

    # --- actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Dim the keys that do nothing where the person is (None shows them disabled)."""
        if action in ("scan_now", "toggle_pause", "retry", "requeue") and not self.connected:
            return None
        if action == "retry" and self._selected("pending") is None:
            return None
        if action == "requeue" and self._selected("failed") is None:
            return None
        return True

    def _selected(self, where: str) -> str | None:
        """The event the person points at, if it is in ``where`` (pending or failed)."""
        screen = self.screen
        if isinstance(screen, DetailScreen):
            detail = screen.detail
            return str(detail["event_id"]) if detail.get("location") == where else None
        if self._active_tab() != where:
            return None
        return self._table(where).selected_key()

    @on(TabbedContent.TabActivated)
    def _tab_changed(self) -> None:
        self.refresh_bindings()
        table = self.tables.get(self._active_tab())
        if table is not None:
            table.focus()

    def action_show_tab(self, name: str) -> None:
        self.tabs.active = name

    def action_scan_now(self) -> None:
        self._command("scan_now", "scan requested")

    def action_toggle_pause(self) -> None:
        if self.engine_state == "paused":
            self._command("resume", "resumed")
        else:
            self._command("pause", "paused: no new job starts until resumed")

    def action_retry(self) -> None:
        event_id = self._selected("pending")
        if event_id is None:
            self.notify("Select a pending event first.", severity="warning")
            return
        self._command("retry", f"{event_id}: retrying now", event_id=event_id)

    def action_requeue(self) -> None:
        event_id = self._selected("failed")
        if event_id is None:
            self.notify("Select a failed event first.", severity="warning")
            return
        question = (f"Move {event_id} out of the failed directory, back into the pending "
                    "directory, and upload it again?\n\nIts error report is kept beside, "
                    "renamed.")

        def answered(confirmed: bool | None) -> None:
            if confirmed:
                if isinstance(self.screen, DetailScreen):
                    self.pop_screen()
                self._command("requeue", f"{event_id}: moved back to pending",
                              event_id=event_id)

        self.push_screen(ConfirmScreen(question, "Requeue"), answered)

    @on(DataTable.RowSelected)
    def _row_chosen(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self._load_detail(str(event.row_key.value))

    def _command(self, cmd: str, done: str, **args: Any) -> None:
        def call() -> None:
            control_client.request(self.socket_path, cmd, timeout=COMMAND_TIMEOUT, **args)
            self.post_message(CommandDone(done))

        self.run_worker(call, name=cmd.replace("_", " "), group="commands", thread=True,
                        exit_on_error=False)

    def _load_detail(self, event_id: str) -> None:
        def call() -> None:
            detail = control_client.request(self.socket_path, "job",
                                            timeout=COMMAND_TIMEOUT, event_id=event_id)
            self.post_message(JobDetailReady(detail))

        self.run_worker(call, name=f"details of {event_id}", group="commands",
                        thread=True, exit_on_error=False)

    def on_command_done(self, message: CommandDone) -> None:
        if self._closing_down:
            return
        self.notify(message.text)
        self._note(message.text)

    def on_job_detail_ready(self, message: JobDetailReady) -> None:
        if self._closing_down:
            return
        self.push_screen(DetailScreen(message.detail))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place every worker failure is shown to the person."""
        if event.state is WorkerState.ERROR:
            error = event.worker.error
            self.notify(str(error), title=f"{event.worker.name} failed", severity="error",
                        timeout=8)
            self._note(f"{event.worker.name} failed: {error}")
