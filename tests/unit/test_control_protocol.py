"""The control socket: its protocol, and that no client can slow down or crash the engine."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from uploader_core import DataUploader, EndpointUnavailable
from uploader_core.control import ControlServer
from uploader_core.control_client import ControlConnection, ControlError, EngineNotRunning
from uploader_core.control_protocol import MAX_REQUEST_BYTES, socket_path
from uploader_core.errors import ConfigurationError
from uploader_core.monitor import PendingJob
from uploader_core.testing import MemoryRemote, write_package

DEADLINE = 20.0


@dataclass
class Served:
    engine: DataUploader
    remote: MemoryRemote
    server: ControlServer
    path: Path
    pending: Path
    failed: Path


@pytest.fixture
def serve(make_rig: Callable[..., Any], tmp_path: Path) -> Iterator[Callable[..., Served]]:
    servers: list[ControlServer] = []

    def make(**server_options: Any) -> Served:
        rig = make_rig(**server_options.pop("engine", {}))
        server = ControlServer(rig.engine, tmp_path / "u.sock", **server_options)
        server.start()
        servers.append(server)
        return Served(rig.engine, rig.remote, server, tmp_path / "u.sock", rig.pending,
                      rig.failed)

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def served(serve: Callable[..., Served]) -> Served:
    return serve()


class Running:
    """The engine's service loop in a thread, stopped on exit."""

    def __init__(self, engine: DataUploader) -> None:
        self.engine = engine
        self.thread = threading.Thread(target=engine.run, name="engine")

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.request_stop()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive()


class Raw:
    """A client speaking bytes, to send what a well-behaved client never would."""

    opened: list[Raw] = []  # noqa: RUF012 -- closed after each test, even a failed one

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        Raw.opened.append(self)
        self.sock.settimeout(DEADLINE)
        self.sock.connect(str(path))
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    def closed_by_server(self) -> bool:
        """Reads (and discards) until EOF; True if the server closed the connection."""
        try:
            while self.sock.recv(1 << 20):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(autouse=True)
def _close_raw_clients() -> Iterator[None]:
    yield
    while Raw.opened:
        Raw.opened.pop().close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # polling with a deadline


# --- the socket file


def test_socket_is_created_mode_0660_and_removed_on_close(served: Served) -> None:
    st = os.stat(served.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert [p.name for p in served.path.parent.iterdir() if p.name.startswith(".")
            and p.name.endswith(".s")] == []  # the temporary name is gone
    served.server.close()
    assert not served.path.exists()


def test_a_stale_socket_is_replaced(make_rig: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "u.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: an engine that was killed
    with ControlServer(make_rig().engine, path), ControlConnection(path) as connection:
        assert connection.request("hello")["protocol"] == 1


def test_a_second_server_refuses_while_the_first_answers(served: Served,
                                                         make_rig: Callable[..., Any]) -> None:
    other = ControlServer(make_rig().engine, served.path)
    with pytest.raises(ConfigurationError, match="another uploader is already running"):
        other.start()
    with ControlConnection(served.path) as connection:  # the first one is untouched
        assert connection.request("hello")["pid"] == os.getpid()


def test_a_file_that_is_not_a_socket_is_never_removed(make_rig: Callable[..., Any],
                                                       tmp_path: Path) -> None:
    path = tmp_path / "u.sock"
    path.write_text("precious")
    with pytest.raises(ConfigurationError, match="not a socket"):
        ControlServer(make_rig().engine, path).start()
    assert path.read_text() == "precious"


def test_a_path_too_long_for_a_unix_socket_names_the_setting(make_rig: Callable[..., Any],
                                                             tmp_path: Path) -> None:
    path = tmp_path / ("d" * 120) / "u.sock"
    with pytest.raises(ConfigurationError, match=r"uploader\.control\.socket_path"):
        ControlServer(make_rig().engine, path).start()


def test_default_path_sits_beside_the_pending_directory(tmp_path: Path) -> None:
    pending = tmp_path / "data" / "pending_upload"
    assert socket_path({"pending_upload_dir": str(pending)}) == tmp_path / "data" / \
        "uploader.sock"
    assert socket_path({"control": {"socket_path": "/run/x.sock"}}) == Path("/run/x.sock")


def test_connecting_to_nothing_says_the_engine_is_not_running(tmp_path: Path) -> None:
    with pytest.raises(EngineNotRunning, match="uploader run -c FILE"):
        ControlConnection(tmp_path / "none.sock")


# --- the protocol


def test_commands_answer_with_results(served: Served) -> None:
    write_package(served.pending, "evt_a")
    served.engine.run_once()
    with ControlConnection(served.path) as connection:
        hello = connection.request("hello")
        assert hello["protocol"] == 1
        assert "requeue" in hello["commands"]
        snapshot = connection.request("snapshot")
        assert snapshot["recent"][0]["event_id"] == "evt_a"
        assert connection.request("snapshot", pending_limit=0)["pending"] == []
        job = connection.request("job", event_id="evt_a")
        assert job["location"] == "uploaded"
        assert job["metadata"]["eventId"] == "evt_a"
        assert [h["outcome"] for h in job["history"]] == ["completed"]
        assert connection.request("pause") == {"paused": True}
        assert connection.request("snapshot")["state"] == "paused"
        assert connection.request("resume") == {"paused": False}
        assert connection.request("scan_now") == {}
        with pytest.raises(ControlError, match="evt_a is not pending"):
            connection.request("retry", event_id="evt_a")
        with pytest.raises(ControlError, match="no quarantined package"):
            connection.request("requeue", event_id="evt_a")
        with pytest.raises(ControlError, match="event id"):
            connection.request("job", event_id="../../etc/passwd")


def test_the_reply_echoes_the_request_id(served: Served) -> None:
    raw = Raw(served.path)
    raw.send(b'{"id": "abc", "cmd": "hello"}\n{"id": 7, "cmd": "nope"}\n')
    first, second = raw.reply(), raw.reply()
    assert (first["id"], first["ok"]) == ("abc", True)
    assert (second["id"], second["ok"]) == (7, False)
    assert "unknown command 'nope'" in second["error"]
    raw.close()


def test_retry_and_requeue_act_on_the_engine(make_rig: Callable[..., Any],
                                             tmp_path: Path) -> None:
    rig = make_rig(retry={"initial_backoff_seconds": 600, "max_backoff_seconds": 600})
    write_package(rig.pending, "evt_r")
    write_package(rig.pending, "evt_q", document=b'{"eventId": "evt_q", "x": NaN}')
    rig.remote.faults.fail_next(RuntimeError("glitch"))
    rig.engine.run_once()
    with ControlServer(rig.engine, tmp_path / "u.sock") as server, \
            ControlConnection(server.path) as connection:
        assert connection.request("retry", event_id="evt_r") == {"event_id": "evt_r"}
        job = connection.request("job", event_id="evt_q")
        assert job["location"] == "failed"
        assert "NaN" in job["error_report"]["reason"]
        assert "not valid JSON" in job["metadata_error"]
        moved = connection.request("requeue", event_id="evt_q")
        assert moved == {"event_id": "evt_q", "moved": ["evt_q.mp4", "evt_q.json"]}
    assert (rig.pending / "evt_q.json").exists()


def test_job_details_never_follow_a_symlink(served: Served, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "hunter2"}')
    (served.pending / "evt_link.json").symlink_to(secret)
    with ControlConnection(served.path) as connection:
        job = connection.request("job", event_id="evt_link")
    assert job["metadata"] is None
    assert "symlink" in job["metadata_error"]
    assert "hunter2" not in json.dumps(job)


def test_subscribers_see_phases_progress_and_outcomes_in_order(served: Served) -> None:
    with Running(served.engine), ControlConnection(served.path) as connection:
        assert connection.request("subscribe")["snapshot"]["state"] in ("starting", "idle",
                                                                          "running")
        # Written once subscribed: a job already under way would have shown its first phase
        # to no one.
        write_package(served.pending, "evt_s")
        kinds = []
        deadline = time.monotonic() + DEADLINE
        while "completed" not in kinds:
            assert time.monotonic() < deadline
            message = connection.next_message(1.0)
            if message and message["event"].get("event_id") == "evt_s":
                kinds.append(message["event"]["kind"])
    assert kinds.index("phase") < kinds.index("progress") < kinds.index("completed")


# --- robustness


def test_garbage_is_answered_with_errors_and_the_connection_goes_on(served: Served) -> None:
    raw = Raw(served.path)
    garbage = [b"this is not json", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b'"a string"',
               b'{"cmd": 42}', b'{"no": "cmd"}', b'{"cmd": "job"}',
               b'{"cmd": "job", "event_id": ["x"]}', b'{"cmd": "snapshot", "pending_limit": -1}',
               b'{"cmd": "retry", "event_id": ""}', b"{" * 5000]
    for line in garbage:
        raw.send(line + b"\n")
        reply = raw.reply()
        assert reply["ok"] is False, line
        assert reply["error"]
    raw.send(b"\n   \n")  # blank lines are ignored
    raw.send(b'{"id": 1, "cmd": "hello"}\n')
    assert raw.reply()["ok"] is True
    raw.close()
    write_package(served.pending, "evt_after")
    assert served.engine.run_once()[0].outcome.value == "completed"


def test_an_endless_line_is_refused_and_the_connection_closed(served: Served) -> None:
    raw = Raw(served.path)
    raw.send(b"x" * (MAX_REQUEST_BYTES + 10))
    reply = raw.reply()
    assert reply["ok"] is False and "longer than" in reply["error"]
    assert raw.closed_by_server()
    raw.close()
    with ControlConnection(served.path) as connection:
        assert connection.request("hello")["protocol"] == 1


def test_clients_that_vanish_mid_message_leave_the_server_serving(
        served: Served, caplog: pytest.LogCaptureFixture) -> None:
    served.engine.monitor.pass_started(
        PendingJob(f"evt_{i:05d}", 1000, 1.7e9 + i) for i in range(10_000))
    for _ in range(5):
        raw = Raw(served.path)
        raw.send(b'{"id": 1, "cmd": "snap')  # half a request, then gone
        raw.close()
        raw = Raw(served.path)
        raw.send(b'{"id": 2, "cmd": "snapshot"}\n')  # a 1.5 MB reply nobody reads
        raw.close()
    wait_until(lambda: served.server.client_count == 0, "the server to notice")
    with ControlConnection(served.path) as connection:
        assert connection.request("snapshot")["pending_count"] == 10_000
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_subscriber_that_reads_nothing_is_dropped_and_never_slows_the_engine(
        serve: Callable[..., Served]) -> None:
    served = serve(max_backlog=64 * 1024)
    monitor = served.engine.monitor
    sleeper = Raw(served.path)
    sleeper.send(b'{"cmd": "subscribe", "snapshot": false}\n')
    assert sleeper.reply()["ok"] is True  # ...and it reads nothing from here on
    received: list[dict[str, Any]] = []
    failures: list[BaseException] = []
    with ControlConnection(served.path) as reader:
        reader.request("subscribe", snapshot=False)

        def read_all() -> None:
            try:
                while len(received) < 20_000:
                    message = reader.next_message(DEADLINE)
                    assert message is not None
                    received.append(message)
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=read_all)
        thread.start()
        slowest = 0.0
        for i in range(20_000):  # as the engine reports: ~80 bytes each, 1.6 MB in all
            started = time.perf_counter()
            monitor.phase(f"evt_{i}", "transfer")
            slowest = max(slowest, time.perf_counter() - started)
            if i % 100 == 99:  # a reader that keeps up, as the TUI does
                def kept_up(i: int = i) -> bool:
                    return len(received) > i - 500 or bool(failures)

                wait_until(kept_up, "the reader to keep up")
        thread.join(DEADLINE)
    assert not failures
    assert [m["event"]["event_id"] for m in received] == [f"evt_{i}" for i in range(20_000)]
    # A publish that waited on the sleeper would never return; this bound only allows for a
    # busy machine's scheduling.
    assert slowest < 1.0
    wait_until(lambda: served.server.client_count == 0, "the sleeper to be dropped")
    assert sleeper.closed_by_server()
    sleeper.close()


def test_an_engine_with_a_stalled_subscriber_still_drains_its_queue(
        serve: Callable[..., Served]) -> None:
    served = serve(max_backlog=16 * 1024)
    for i in range(150):
        write_package(served.pending, f"evt_{i:03d}", video=4096)
    sleeper = Raw(served.path)
    sleeper.send(b'{"cmd": "subscribe"}\n')
    with Running(served.engine):
        wait_until(lambda: served.engine.monitor.totals["completed"] == 150,
                   "all 150 events to complete")
    assert sleeper.closed_by_server()
    sleeper.close()


def test_events_keep_flowing_when_they_arrive_while_the_server_wakes_up(
        served: Served) -> None:
    # An event published while the server drained its wake-up socket once left the
    # "already woken" flag set for good, and the stream stalled. Publishing from another
    # thread without pause makes that moment come up thousands of times.
    monitor = served.engine.monitor

    def publish(r: int) -> None:
        for i in range(1000):
            monitor.phase(f"evt_{r}_{i}", "transfer")

    with ControlConnection(served.path) as connection:
        connection.request("subscribe", snapshot=False)
        for round_ in range(100):
            publisher = threading.Thread(target=publish, args=(round_,))
            publisher.start()
            for i in range(1000):
                message = connection.next_message(5.0)
                assert message is not None, f"the stream stalled at event {i} of round {round_}"
            publisher.join()


def test_twenty_clients_at_once(served: Served) -> None:
    for i in range(40):
        write_package(served.pending, f"evt_{i:02d}")
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []
    subscribed = threading.Barrier(21)

    def client(n: int) -> None:
        try:
            with ControlConnection(served.path) as connection:
                connection.request("subscribe", snapshot=False)
                subscribed.wait(DEADLINE)
                seen: list[str] = []
                # A bound on a hang, not a speed: each client asks for a snapshot for each of
                # the ~260 events it is sent, and the 20 clients, the server and the engine
                # share one interpreter here, so the test takes 10-16 s on a slow machine.
                deadline = time.monotonic() + 3 * DEADLINE
                while len(seen) < 40:
                    assert time.monotonic() < deadline
                    # Requests interleave with the stream; their replies are matched by id.
                    assert connection.request("snapshot", pending_limit=5)["state"]
                    message = connection.next_message(1.0)
                    if message and message.get("event", {}).get("kind") == "completed":
                        seen.append(message["event"]["event_id"])
                results[n] = seen
        except BaseException as exc:
            errors.append(exc)
            subscribed.abort()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    subscribed.wait(DEADLINE)
    with Running(served.engine):
        for thread in threads:
            thread.join(DEADLINE * 4)
    assert not errors
    expected = [f"evt_{i:02d}" for i in range(40)]
    assert all(sorted(seen) == expected for seen in results.values())
    assert len(results) == 20


def test_clients_beyond_the_limit_are_turned_away_politely(
        serve: Callable[..., Served]) -> None:
    served = serve(max_clients=2)
    with ControlConnection(served.path) as first, ControlConnection(served.path) as second:
        assert first.request("hello") and second.request("hello")
        third = Raw(served.path)
        reply = third.reply()
        assert reply["ok"] is False and "too many clients" in reply["error"]
        assert third.closed_by_server()


def test_an_endpoint_going_down_is_streamed(served: Served) -> None:
    write_package(served.pending, "evt_e")
    served.remote.faults.fail_next(EndpointUnavailable("sftp down", endpoint="sftp"))
    with ControlConnection(served.path) as connection:
        connection.request("subscribe", snapshot=False)
        served.engine.run_once()
        kinds = {}
        while True:
            message = connection.next_message(1.0)
            if message is None:
                break
            kinds[message["event"]["kind"]] = message["event"]
    assert kinds["endpoint"]["up"] is False
    assert kinds["retry"]["reason"] == "sftp down"
