"""The SFTP plugin against real servers: OpenSSH's sshd, a chrooting sshd, and asyncssh's.

Every test drives the plugin's hooks directly with a :class:`Job` built from files in
``tmp_path``, and checks the outcome on the server's disk. Faults are injected with a small TCP
relay (:class:`FaultProxy`) that can cut a connection or go silent the way a dropped cellular
link does (nothing forwarded, nothing reset).
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import socket
import struct
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import paramiko
import pytest
from servers import SftpDirs, SftpEndpoint, SftpServer
from servers.keys import known_hosts_line, make_ed25519_key
from sftp_servers.asyncssh_server import AsyncsshSftpServer, asyncssh_sftp_server

from uploader_core.config import validate
from uploader_core.errors import (
    ConfigurationError,
    EndpointUnavailable,
    Interrupted,
    TransientError,
)
from uploader_core.job import Job, TransferReceipt, nothing_upcoming
from uploader_plugins.sftp import SftpPlugin, connection, fastsend

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


# --- helpers -----------------------------------------------------------------------------------


def write_job(directory: Path, event_id: str, video: bytes | int,
              document: bytes | None = None) -> Job:
    """Write ``<id>.mp4`` (given bytes, or that many random bytes) and ``<id>.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    video_path = directory / f"{event_id}.mp4"
    json_path = directory / f"{event_id}.json"
    with open(video_path, "wb") as file:
        if isinstance(video, int):
            left = video
            while left:
                chunk = min(left, MiB)
                file.write(os.urandom(chunk))
                left -= chunk
        else:
            file.write(video)
    if document is None:
        document = json.dumps({"eventId": event_id, "species": "red fox",
                               "detections": [{"confidence": 0.9}] * 50}).encode()
    json_path.write_bytes(document)
    st = os.stat(video_path)
    return Job(event_id=event_id, json_path=json_path, video_path=video_path, document=document,
               metadata=json.loads(document), json_sha256=hashlib.sha256(document).hexdigest(),
               video_size=st.st_size, video_mtime_ns=st.st_mtime_ns)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def no_progress(done: int, total: int) -> None:
    pass


def transfer(plugin: SftpPlugin, job: Job,
             progress: Callable[[int, int], None] = no_progress) -> TransferReceipt:
    return plugin.transfer_files(job=job, progress=progress,
                                 upcoming=nothing_upcoming)


def assert_uploaded(endpoint: SftpEndpoint, receipt: TransferReceipt, job: Job,
                    opened_ahead: Job | None = None) -> None:
    """Both files are on the server under their final names, byte for byte; no temporary
    file is left but those of ``opened_ahead``, the job whose files were opened ahead."""
    remote_video = endpoint.local_path(receipt.remote_video_path)
    remote_json = endpoint.local_path(receipt.remote_json_path)
    assert sha256_file(remote_video) == sha256_file(job.video_path) == receipt.video_sha256
    assert remote_json.read_bytes() == job.json_path.read_bytes() == job.document
    leftovers = sorted(p.name for p in (*remote_video.parent.iterdir(),
                                        *remote_json.parent.iterdir())
                       if p.name.endswith(".part"))
    expected = [] if opened_ahead is None else [f".{opened_ahead.event_id}.json.part",
                                                f".{opened_ahead.event_id}.mp4.part"]
    assert leftovers == expected


def known_hosts_via(endpoint: SftpEndpoint, port: int, path: Path) -> Path:
    """The server's known_hosts entry, renamed for a relay listening on ``port``."""
    _, key_type, key_data = endpoint.known_hosts_path.read_text().split()[:3]
    path.write_text(f"[{endpoint.host}]:{port} {key_type} {key_data}\n")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class FaultProxy:
    """A TCP relay to a server that can cut its connections or go silent.

    ``silent``: forward nothing in either direction and reset nothing, like a cellular link
    that died. ``cut_after``: after that many bytes from the client, reset both sides.
    ``cut_next``: reset the connection the next time the client sends anything.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.silent = threading.Event()
        self.cut_after: int | None = None
        self.cut_next = threading.Event()
        self.sent_upstream = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._sockets += [client, server]
            pumps_left = [2]
            for src, dst, upstream in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, upstream, pumps_left),
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool,
              pumps_left: list[int]) -> None:
        try:
            self._forward(src, dst, upstream)
        finally:
            # Only the last of a connection's two pumps closes its sockets. Closed while the
            # other pump is between reading a socket's descriptor and its system call, the
            # number could be handed to a new connection, which that call would then use.
            with self._lock:
                pumps_left[0] -= 1
                last = pumps_left[0] == 0
            if last:
                for sock in (src, dst):
                    sock.close()

    def _forward(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        with selectors.DefaultSelector() as selector:
            try:
                selector.register(src, selectors.EVENT_READ)
                while not self._closed.is_set():
                    if self.silent.is_set():
                        self._closed.wait(0.05)  # not a busy loop while the link is silent
                        continue
                    if not selector.select(0.05):
                        continue
                    data = src.recv(256 * 1024)
                    if not data:
                        break
                    if upstream and (self.cut_next.is_set() or (
                            self.cut_after is not None
                            and self.sent_upstream + len(data) > self.cut_after)):
                        self.cut_next.clear()
                        self._reset(src, dst)
                        return
                    if upstream:
                        self.sent_upstream += len(data)
                    dst.sendall(data)
            except (OSError, ValueError):
                return
        with suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    @staticmethod
    def _reset(*socks: socket.socket) -> None:
        """Reset both sides: nothing more passes, and closing them (by the pumps) sends RST."""
        for sock in socks:
            with suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._listener.close()
        # The pumps see the flag within 0.05 s and close their sockets themselves.
        for sock in self._sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


# --- fixtures ----------------------------------------------------------------------------------


PluginFactory = Callable[..., SftpPlugin]


@pytest.fixture
def make_plugin() -> Iterator[PluginFactory]:
    """``make_plugin(section, **overrides)``: a configured plugin, shut down after the test."""
    made: list[SftpPlugin] = []

    def make(section: dict[str, Any], **overrides: Any) -> SftpPlugin:
        plugin = SftpPlugin()
        config = validate({"uploader": {"sftp": {**section, **overrides}}},
                          plugin.uploader_config_sections())
        plugin.uploader_configure(config=config)
        made.append(plugin)
        return plugin

    yield make
    for plugin in made:
        plugin.uploader_shutdown()


@pytest.fixture
def handshakes(monkeypatch: pytest.MonkeyPatch) -> list[paramiko.Transport]:
    """Every SSH transport that starts a handshake during the test, in order."""
    seen: list[paramiko.Transport] = []
    original = paramiko.Transport.start_client

    def start_client(self: paramiko.Transport, *args: Any, **kwargs: Any) -> None:
        seen.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(paramiko.Transport, "start_client", start_client)
    return seen


@pytest.fixture
def proxy(sftp_endpoint: SftpDirs) -> Iterator[FaultProxy]:
    relay = FaultProxy(sftp_endpoint.endpoint.host, sftp_endpoint.endpoint.port)
    yield relay
    relay.close()


@pytest.fixture
def via_proxy(sftp_endpoint: SftpDirs, proxy: FaultProxy, tmp_path: Path) -> dict[str, Any]:
    """The test's SFTP section, pointed at the relay."""
    known = known_hosts_via(sftp_endpoint.endpoint, proxy.port, tmp_path / "known_hosts_proxy")
    return {**sftp_endpoint.config_section(), "port": proxy.port,
            "known_hosts_path": str(known)}


@pytest.fixture
def hosted(tmp_path: Path) -> Iterator[AsyncsshSftpServer]:
    """asyncssh's server, jailed, with /videos and /json inside the jail."""
    with asyncssh_sftp_server(tmp_path / "asyncssh") as server:
        for name in ("videos", "json"):
            (server.root / name).mkdir()
        yield server


def hosted_section(server: AsyncsshSftpServer) -> dict[str, Any]:
    return server.endpoint.config_section("/videos", "/json")


# --- uploads -----------------------------------------------------------------------------------


def test_upload_is_byte_identical_and_reports_its_sha256(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(sftp_endpoint.config_section())
    job = write_job(tmp_path / "pending", "evt_20261128T061512Z_cam03_0042", 5 * MiB + 123)
    calls: list[tuple[int, int]] = []

    receipt = transfer(plugin, job, lambda done, total: calls.append((done, total)))

    assert receipt.destination == "sftp"
    assert receipt.remote_video_path == f"{sftp_endpoint.remote_video_dir}/{job.event_id}.mp4"
    assert receipt.remote_json_path == f"{sftp_endpoint.remote_json_dir}/{job.event_id}.json"
    assert_uploaded(sftp_endpoint.endpoint, receipt, job)
    total = job.video_size + job.json_size
    assert calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})
    assert len(calls) >= 5  # progress is reported while the video goes out, not only at the end
    assert job.video_path.exists() and job.json_path.exists()  # the plugin only reads


def test_paramikos_transport_reads_its_socket_ahead(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[connection.StallGuardSocket] = []
    original = connection.open_socket

    def open_socket(*args: Any, **kwargs: Any) -> connection.StallGuardSocket:
        opened.append(original(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(connection, "open_socket", open_socket)
    plugin = make_plugin(sftp_endpoint.config_section())
    job = write_job(tmp_path / "pending", "evt_ahead", 2 * MiB)
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)

    # The whole upload, handshake included, went through a socket that reads ahead.
    [sock] = opened
    assert sock.reads_ahead


def test_the_video_is_hashed_from_the_reads_that_send_it(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = make_plugin(sftp_endpoint.config_section())
    job = write_job(tmp_path / "pending", "evt_hashed", 3 * MiB + 17)
    hashed: list[tuple[str, int]] = []
    real_sha256 = hashlib.sha256

    class Recording:
        """sha256 that notes which thread feeds it, and how much."""

        def __init__(self) -> None:
            self._hash = real_sha256()

        def update(self, data: Any) -> None:
            hashed.append((threading.current_thread().name, len(data)))
            self._hash.update(data)

        def copy(self) -> Any:
            return self._hash.copy()

        def hexdigest(self) -> str:
            return self._hash.hexdigest()

    # hashlib is one module everywhere: the transfer's hashes are these ones.
    monkeypatch.setattr(hashlib, "sha256", Recording)
    receipt = transfer(plugin, job)
    monkeypatch.undo()

    assert_uploaded(sftp_endpoint.endpoint, receipt, job)  # the digest is the file's
    assert len(hashed) >= 3  # one update per read of about 1 MiB
    # Every byte hashed once, by the thread that reads and sends it: no hand-off per read.
    assert sum(size for _, size in hashed) == job.video_size
    assert {name for name, _ in hashed} == {threading.current_thread().name}


def test_a_second_upload_replaces_the_final_files(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(sftp_endpoint.config_section())
    first = write_job(tmp_path / "a", "evt_again", 300_000)
    transfer(plugin, first)
    second = write_job(tmp_path / "b", "evt_again", 200_000, b'{"eventId": "evt_again"}')

    receipt = transfer(plugin, second)

    assert_uploaded(sftp_endpoint.endpoint, receipt, second)


def test_the_final_name_never_shows_a_partial_file(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(sftp_endpoint.config_section())
    job = write_job(tmp_path, "evt_watched", 24 * MiB)
    final = sftp_endpoint.local_video_dir / f"{job.event_id}.mp4"
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            with suppress(FileNotFoundError):
                seen.add(final.stat().st_size)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        transfer(plugin, job)
    finally:
        done.set()
        watcher.join()
    assert seen <= {job.video_size}
    assert final.stat().st_size == job.video_size


def test_an_interrupted_upload_leaves_only_the_temporary_file(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(sftp_endpoint.config_section())
    job = write_job(tmp_path, "evt_stopped", 8 * MiB)
    local = {p: p.read_bytes() for p in (job.video_path, job.json_path)}

    def stop(done: int, total: int) -> None:
        raise Interrupted("the uploader is stopping")

    with pytest.raises(Interrupted, match="the uploader is stopping"):
        transfer(plugin, job, stop)

    assert {p: p.read_bytes() for p in local} == local

    videos = sftp_endpoint.local_video_dir
    assert not (videos / "evt_stopped.mp4").exists()
    assert 0 < (videos / ".evt_stopped.mp4.part").stat().st_size < job.video_size
    assert not (sftp_endpoint.local_json_dir / "evt_stopped.json").exists()
    # The leftover is harmless: the next attempt goes through.
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)


@pytest.mark.faults
def test_a_connection_cut_mid_upload_leaves_only_the_temporary_file(
        sftp_endpoint: SftpDirs, proxy: FaultProxy, via_proxy: dict[str, Any],
        make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(via_proxy)
    job = write_job(tmp_path, "evt_cut", 16 * MiB)
    local = {p: p.read_bytes() for p in (job.video_path, job.json_path)}
    proxy.cut_after = 6 * MiB

    with pytest.raises(EndpointUnavailable) as caught:
        transfer(plugin, job)

    assert caught.value.endpoint == "sftp"
    # What was being done, to which file, and that the connection went.
    assert ".evt_cut.mp4.part" in str(caught.value), caught.value
    assert "connection to the SFTP server lost" in str(caught.value), caught.value
    # paramiko's socket reads ahead: what it had taken in when the link went is dropped with
    # the connection, and the local package is as it was.
    assert {p: p.read_bytes() for p in local} == local
    videos = sftp_endpoint.local_video_dir
    assert not (videos / "evt_cut.mp4").exists()
    assert (videos / ".evt_cut.mp4.part").stat().st_size < job.video_size
    proxy.cut_after = None
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)


def test_memory_stays_flat_while_streaming_a_large_video(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(sftp_endpoint.config_section())
    job = write_job(tmp_path, "evt_large", 50 * MiB)
    tracemalloc.start()
    try:
        receipt = transfer(plugin, job)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB of Python allocations for 50 MiB"
    assert_uploaded(sftp_endpoint.endpoint, receipt, job)


# --- one connection ----------------------------------------------------------------------------


def test_one_connection_serves_every_job(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, handshakes: list[paramiko.Transport],
        tmp_path: Path) -> None:
    plugin = make_plugin(sftp_endpoint.config_section())
    jobs = [write_job(tmp_path, f"evt_{n:03d}", 64 * 1024) for n in range(12)]

    for job in jobs:
        assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)

    assert len(handshakes) == 1
    assert plugin.connections_made == 1


@pytest.mark.faults
def test_a_kept_connection_found_dead_is_replaced_within_the_same_job(
        sftp_endpoint: SftpDirs, proxy: FaultProxy, via_proxy: dict[str, Any],
        make_plugin: PluginFactory, handshakes: list[paramiko.Transport],
        tmp_path: Path) -> None:
    plugin = make_plugin(via_proxy)
    transfer(plugin, write_job(tmp_path, "evt_one", 100_000))
    proxy.cut_next.set()  # the idle connection looks fine until it is used

    job = write_job(tmp_path, "evt_two", 100_000)
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)
    assert len(handshakes) == 2


def test_a_job_whose_video_changed_keeps_the_connection(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, handshakes: list[paramiko.Transport],
        tmp_path: Path) -> None:
    plugin = make_plugin(sftp_endpoint.config_section())
    changed = write_job(tmp_path, "evt_growing", 100_000)
    with open(changed.video_path, "ab") as video:
        video.write(b"more")  # Module B is still writing

    with pytest.raises(TransientError, match="changed since it settled"):
        transfer(plugin, changed)

    job = write_job(tmp_path, "evt_settled", 100_000)
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)
    assert len(handshakes) == 1
    assert not (sftp_endpoint.local_video_dir / "evt_growing.mp4").exists()


def test_nothing_connects_before_the_first_transfer(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory,
        handshakes: list[paramiko.Transport]) -> None:
    make_plugin(sftp_endpoint.config_section(), port=free_port())  # nothing listens there
    assert handshakes == []


@pytest.mark.faults
@pytest.mark.parametrize("fault", ["restart", "kill"])
def test_reconnects_after_the_server_went_away(
        sftp_server: SftpServer, sftp_endpoint: SftpDirs, make_plugin: PluginFactory,
        handshakes: list[paramiko.Transport], tmp_path: Path, fault: str) -> None:
    plugin = make_plugin(sftp_endpoint.config_section())
    transfer(plugin, write_job(tmp_path, "evt_before", 100_000))
    if fault == "restart":
        sftp_server.restart()
    else:
        sftp_server.kill()
        sftp_server.start()

    job = write_job(tmp_path, "evt_after", 100_000)
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)
    assert len(handshakes) == 2


@pytest.mark.faults
def test_server_down_is_endpoint_unavailable_then_recovers(
        sftp_server: SftpServer, sftp_endpoint: SftpDirs, make_plugin: PluginFactory,
        tmp_path: Path) -> None:
    plugin = make_plugin(sftp_endpoint.config_section())
    job = write_job(tmp_path, "evt_down", 100_000)
    sftp_server.stop()
    try:
        with pytest.raises(EndpointUnavailable) as caught:
            transfer(plugin, job)
        assert "connection refused" in str(caught.value)
        assert caught.value.endpoint == "sftp"
    finally:
        sftp_server.start()
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)


def test_nothing_listening_is_endpoint_unavailable(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(sftp_endpoint.config_section(), port=free_port())
    with pytest.raises(EndpointUnavailable, match="cannot connect"):
        transfer(plugin, write_job(tmp_path, "evt_nobody", 1000))


# --- dead links and interrupts -----------------------------------------------------------------


@pytest.mark.faults
def test_a_silent_link_times_out_instead_of_hanging(
        sftp_endpoint: SftpDirs, proxy: FaultProxy, via_proxy: dict[str, Any],
        make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(via_proxy, timeout_seconds=1.0)
    job = write_job(tmp_path, "evt_silent", 32 * MiB)

    def go_silent(done: int, total: int) -> None:
        proxy.silent.set()

    started = time.monotonic()
    with pytest.raises(EndpointUnavailable, match="no answer"):
        transfer(plugin, job, go_silent)
    assert time.monotonic() - started < 6
    assert not (sftp_endpoint.local_video_dir / "evt_silent.mp4").exists()

    proxy.silent.clear()  # the link comes back: a new connection is made
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)


@pytest.mark.faults
def test_a_server_that_never_greets_times_out(
        proxy: FaultProxy, via_proxy: dict[str, Any], make_plugin: PluginFactory,
        tmp_path: Path) -> None:
    proxy.silent.set()
    plugin = make_plugin(via_proxy, timeout_seconds=1.0)
    started = time.monotonic()
    with pytest.raises(EndpointUnavailable, match="handshake"):
        transfer(plugin, write_job(tmp_path, "evt_mute", 1000))
    assert time.monotonic() - started < 4


@pytest.mark.faults
def test_interrupt_stops_an_upload_stalled_on_a_silent_link(
        sftp_endpoint: SftpDirs, proxy: FaultProxy, via_proxy: dict[str, Any],
        make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(via_proxy, timeout_seconds=60.0)
    assert interrupt_once_silent(plugin, proxy, tmp_path) < 1.0
    assert not (sftp_endpoint.local_video_dir / "evt_stalled.mp4").exists()


def interrupt_once_silent(plugin: SftpPlugin, proxy: FaultProxy, tmp_path: Path) -> float:
    """Upload ``evt_stalled``, silence the link once it is under way and interrupt the plugin
    0.5 s later; the seconds from the interrupt until the upload raised Interrupted."""
    job = write_job(tmp_path, "evt_stalled", 32 * MiB)
    interrupted_at: list[float] = []

    def interrupt() -> None:
        interrupted_at.append(time.monotonic())
        plugin.uploader_interrupt()

    def go_silent(done: int, total: int) -> None:
        if not proxy.silent.is_set():
            proxy.silent.set()
            threading.Timer(0.5, interrupt).start()

    with pytest.raises(Interrupted):
        transfer(plugin, job, go_silent)
    return time.monotonic() - interrupted_at[0]


@pytest.mark.faults
def test_interrupt_stops_a_handshake_with_a_server_that_says_nothing(
        proxy: FaultProxy, via_proxy: dict[str, Any], make_plugin: PluginFactory,
        tmp_path: Path) -> None:
    proxy.silent.set()
    plugin = make_plugin(via_proxy, timeout_seconds=60.0)
    timer = threading.Timer(0.5, plugin.uploader_interrupt)
    timer.start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        transfer(plugin, write_job(tmp_path, "evt_mute", 1000))
    assert time.monotonic() - started < 1.5
    # Stopping is final for this run of the engine: no new connection is attempted.
    with pytest.raises(Interrupted):
        transfer(plugin, write_job(tmp_path, "evt_mute", 1000))


# --- host keys ---------------------------------------------------------------------------------


def test_an_unknown_host_is_refused_under_the_strict_policy(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    plugin = make_plugin(sftp_endpoint.config_section(), known_hosts_path=str(known))

    with pytest.raises(ConfigurationError) as caught:
        transfer(plugin, write_job(tmp_path, "evt_x", 1000))

    assert "not known" in caught.value.message
    assert "accept-new" in caught.value.message
    assert caught.value.setting == "uploader.sftp.host_key_policy"
    assert known.read_text() == ""
    assert not list(sftp_endpoint.local_video_dir.iterdir())


def test_accept_new_records_an_unknown_host_like_openssh(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    known = tmp_path / "new" / "known_hosts"
    section = {**sftp_endpoint.config_section(), "known_hosts_path": str(known)}
    plugin = make_plugin(section, host_key_policy="accept-new")
    job = write_job(tmp_path, "evt_first", 1000)

    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)

    assert known.stat().st_mode & 0o777 == 0o600
    assert known.read_text() == sftp_endpoint.endpoint.known_hosts_path.read_text()
    # What was recorded is what a strict plugin trusts from now on.
    strict = make_plugin(section)
    assert_uploaded(sftp_endpoint.endpoint, transfer(strict, job), job)


def test_hashed_known_hosts_entries_are_understood(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_bytes(sftp_endpoint.endpoint.known_hosts_path.read_bytes())
    # As OpenSSH writes them with HashKnownHosts yes (Debian's default).
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True,
                   capture_output=True)
    assert known.read_text().startswith("|1|")
    plugin = make_plugin(sftp_endpoint.config_section(), known_hosts_path=str(known))
    job = write_job(tmp_path, "evt_hashed", 1000)
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)


@pytest.mark.parametrize("policy", ["strict", "accept-new"])
def test_a_changed_host_key_is_always_refused(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path,
        policy: str) -> None:
    endpoint = sftp_endpoint.endpoint
    impostor = make_ed25519_key(tmp_path / "other_host_key", "someone else")
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_line(endpoint.host, endpoint.port, impostor))
    before = known.read_text()
    plugin = make_plugin(sftp_endpoint.config_section(), known_hosts_path=str(known),
                         host_key_policy=policy)

    with pytest.raises(ConfigurationError) as caught:
        transfer(plugin, write_job(tmp_path, "evt_x", 1000))

    assert f"host key for [{endpoint.host}]:{endpoint.port} changed" in caught.value.message
    assert caught.value.setting == "uploader.sftp.known_hosts_path"
    assert known.read_text() == before


# --- credentials -------------------------------------------------------------------------------


def test_a_key_the_server_does_not_know_is_refused(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    make_ed25519_key(tmp_path / "stranger", "not authorized")
    plugin = make_plugin(sftp_endpoint.config_section(), ssh_key_path=str(tmp_path / "stranger"))
    with pytest.raises(ConfigurationError) as caught:
        transfer(plugin, write_job(tmp_path, "evt_x", 1000))
    assert caught.value.setting == "uploader.sftp.ssh_key_path"
    assert repr(sftp_endpoint.endpoint.username) in caught.value.message
    assert "uploader.sftp.username" in caught.value.message


def test_a_wrong_user_is_refused(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(sftp_endpoint.config_section(), username="nobody-here")
    with pytest.raises(ConfigurationError, match="'nobody-here'"):
        transfer(plugin, write_job(tmp_path, "evt_x", 1000))


def test_an_unusable_key_stops_configuration_without_connecting(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path,
        handshakes: list[paramiko.Transport]) -> None:
    garbage = tmp_path / "garbage_key"
    garbage.write_text("this is not a key\n")
    section = sftp_endpoint.config_section()
    for path, expected in ((garbage, "not a usable private key"),
                           (tmp_path / "absent", "does not exist")):
        with pytest.raises(ConfigurationError, match=expected) as caught:
            make_plugin(section, ssh_key_path=str(path))
        assert caught.value.setting == "uploader.sftp.ssh_key_path"
    assert handshakes == []


def test_an_encrypted_key_needs_its_passphrase_which_is_never_shown(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    passphrase = "correct horse battery staple"
    encrypted = tmp_path / "encrypted_key"
    encrypted.write_bytes(_encrypted_openssh_key(sftp_endpoint.endpoint.key_path, passphrase))
    section = {**sftp_endpoint.config_section(), "ssh_key_path": str(encrypted)}

    with pytest.raises(ConfigurationError, match="is encrypted") as missing:
        make_plugin(section)
    assert missing.value.setting == "uploader.sftp.ssh_key_path"
    with pytest.raises(ConfigurationError, match="passphrase is wrong") as wrong:
        make_plugin(section, ssh_key_passphrase="not it")
    assert "not it" not in str(wrong.value)

    monkeypatch.setenv("TEST_SFTP_KEY_PASSPHRASE", passphrase)
    plugin = make_plugin(section, ssh_key_passphrase_env="TEST_SFTP_KEY_PASSPHRASE")
    job = write_job(tmp_path, "evt_secret", 1000)
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)
    assert passphrase not in caplog.text


def _encrypted_openssh_key(plain: Path, passphrase: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    loaded = serialization.load_ssh_private_key(plain.read_bytes(), password=None)
    return loaded.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.BestAvailableEncryption(passphrase.encode()),
    )


# --- remote directories ------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["remote_video_dir", "remote_json_dir"])
def test_an_unwritable_remote_directory_names_its_setting(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path, key: str) -> None:
    local = (sftp_endpoint.local_video_dir if key == "remote_video_dir"
             else sftp_endpoint.local_json_dir)
    plugin = make_plugin(sftp_endpoint.config_section())
    local.chmod(0o555)
    try:
        with pytest.raises(ConfigurationError, match="permission denied") as caught:
            transfer(plugin, write_job(tmp_path, "evt_denied", 1000))
    finally:
        local.chmod(0o755)
    assert caught.value.setting == f"uploader.sftp.{key}"


@pytest.mark.parametrize("key", ["remote_video_dir", "remote_json_dir"])
def test_a_missing_remote_directory_names_its_setting(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path, key: str) -> None:
    missing = f"{sftp_endpoint.remote_dir}/not-there"
    plugin = make_plugin(sftp_endpoint.config_section(), **{key: missing})
    with pytest.raises(ConfigurationError, match="does not exist") as caught:
        transfer(plugin, write_job(tmp_path, "evt_lost", 1000))
    assert caught.value.setting == f"uploader.sftp.{key}"
    assert missing in caught.value.message


def test_remote_directories_must_be_absolute(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make_plugin(sftp_endpoint.config_section(), remote_json_dir="json")
    assert caught.value.setting == "uploader.sftp.remote_json_dir"


# --- ciphers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("ciphers", "expected"), [
    (None, "aes128-gcm@openssh.com"),
    (["aes256-gcm@openssh.com", "aes128-ctr"], "aes256-gcm@openssh.com"),
    (["aes256-ctr", "aes128-gcm@openssh.com"], "aes256-ctr"),
])
def test_the_negotiated_cipher_follows_the_configured_order(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, handshakes: list[paramiko.Transport],
        tmp_path: Path, ciphers: list[str] | None, expected: str) -> None:
    overrides = {} if ciphers is None else {"ciphers": ciphers}
    plugin = make_plugin(sftp_endpoint.config_section(), **overrides)
    job = write_job(tmp_path, "evt_cipher", 100_000)
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)
    # Both directions; remote_cipher is missing from paramiko's type stubs, not from paramiko.
    assert [(t.local_cipher, vars(t)["remote_cipher"]) for t in handshakes] == [
        (expected, expected)]


def test_a_server_without_aes_gcm_gets_the_next_configured_cipher(
        tmp_path: Path, make_plugin: PluginFactory, handshakes: list[paramiko.Transport]) -> None:
    with asyncssh_sftp_server(tmp_path / "ctr_only", ciphers=["aes256-ctr"]) as server:
        for name in ("videos", "json"):
            (server.root / name).mkdir()
        plugin = make_plugin(hosted_section(server))
        job = write_job(tmp_path / "pending", "evt_ctr", 100_000)
        assert_uploaded(server.endpoint, transfer(plugin, job), job)
        assert handshakes[-1].local_cipher == "aes256-ctr"

        only_gcm = make_plugin(hosted_section(server), ciphers=["aes128-gcm@openssh.com"])
        with pytest.raises(ConfigurationError, match="no acceptable ciphers") as caught:
            transfer(only_gcm, job)
        assert caught.value.setting == "uploader.sftp.ciphers"
        plugin.uploader_shutdown()


def test_an_unsupported_cipher_is_a_configuration_error(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make_plugin(sftp_endpoint.config_section(), ciphers=["chacha20-poly1305@openssh.com"])
    assert caught.value.setting == "uploader.sftp.ciphers"
    assert "not supported: chacha20-poly1305@openssh.com" in caught.value.message
    assert "aes128-ctr" in caught.value.message  # says what would work


# --- channel data without paramiko's copies (fastsend) -----------------------------------------


def lean_stats(transport: paramiko.Transport) -> fastsend.LeanStats:
    stats = fastsend.stats(transport)
    return stats if stats is not None else fastsend.LeanStats()


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"])
def test_aes_gcm_uploads_build_their_packets_on_the_lean_path(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, handshakes: list[paramiko.Transport],
        tmp_path: Path, cipher: str) -> None:
    plugin = make_plugin(sftp_endpoint.config_section(), ciphers=[cipher])
    job = write_job(tmp_path, "evt_lean", 6 * MiB + 12_345)

    # sshd checks every packet's tag: a wrong length, nonce or sequence ends the connection.
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)

    [transport] = handshakes
    assert transport.local_cipher == cipher
    stats = lean_stats(transport)
    assert stats.data_bytes >= job.video_size  # every write request, headers included
    assert stats.packets >= job.video_size // (32 * 1024)  # sshd's largest channel packet
    assert stats.keys == 1
    # Each write request's packets (up to about 256 KiB of data) reach the socket in one call.
    assert stats.writes <= stats.packets / 3
    # Numbered like every other packet since the keys were set (GCM's nonce does not show it).
    assert vars(transport.packetizer)["_Packetizer__sequence_number_out"] > stats.packets


def test_asyncssh_accepts_the_lean_packets_too(
        hosted: AsyncsshSftpServer, make_plugin: PluginFactory,
        handshakes: list[paramiko.Transport], tmp_path: Path) -> None:
    plugin = make_plugin(hosted_section(hosted))
    job = write_job(tmp_path, "evt_lean_asyncssh", 3 * MiB + 7)

    assert_uploaded(hosted.endpoint, transfer(plugin, job), job)

    assert handshakes[-1].local_cipher == "aes128-gcm@openssh.com"
    assert lean_stats(handshakes[-1]).data_bytes >= job.video_size


@pytest.mark.parametrize("how", ["byte_limit", "renegotiate"])
def test_key_re_exchange_in_the_middle_of_a_lean_upload(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, handshakes: list[paramiko.Transport],
        tmp_path: Path, how: str) -> None:
    plugin = make_plugin(sftp_endpoint.config_section())
    transfer(plugin, write_job(tmp_path / "warm", "evt_warm", 100_000))  # the connection is made
    [transport] = handshakes
    before = lean_stats(transport)
    assert before.keys == 1 and before.packets > 0
    job = write_job(tmp_path / "pending", "evt_rekeyed", 16 * MiB + 999)
    rekeys: list[threading.Thread] = []
    packets_at_rekey: list[int] = []

    if how == "byte_limit":
        # The lean path counts what it sends and asks for new keys every 3 MiB, as paramiko's
        # own send_message does at 512 MiB; the key exchanges run under the upload.
        vars(transport.packetizer)["REKEY_BYTES"] = 3 * MiB
        progress = no_progress
    else:
        def progress(done: int, total: int) -> None:
            if done >= 2 * MiB and not rekeys:
                packets_at_rekey.append(lean_stats(transport).packets)
                rekeys.append(threading.Thread(target=transport.renegotiate_keys))
                rekeys[0].start()

    receipt = transfer(plugin, job, progress)
    for thread in rekeys:
        thread.join(10)

    assert_uploaded(sftp_endpoint.endpoint, receipt, job)
    assert transport.is_active() and len(handshakes) == 1
    after = lean_stats(transport)
    # Each new key it sent under counts once: lean packets went out before and after.
    if how == "byte_limit":
        assert after.keys >= 3  # at least two key exchanges during the upload
    else:
        assert after.keys == 2
        assert before.packets < packets_at_rekey[0] < after.packets
    assert after.data_bytes - before.data_bytes >= job.video_size


@pytest.mark.parametrize("cipher", ["aes128-ctr", "aes256-ctr"])
def test_other_ciphers_send_through_paramiko(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, handshakes: list[paramiko.Transport],
        tmp_path: Path, cipher: str) -> None:
    plugin = make_plugin(sftp_endpoint.config_section(), ciphers=[cipher])
    job = write_job(tmp_path, "evt_ctr", 2 * MiB + 5)

    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)

    assert handshakes[-1].local_cipher == cipher
    assert lean_stats(handshakes[-1]).packets == 0


def test_a_paramiko_without_the_expected_internals_gets_channel_send() -> None:
    left, right = socket.socketpair()
    try:
        transport = paramiko.Transport(left)  # never started: only its objects are looked at
        sender = fastsend._sender(transport)
        assert sender is not None  # this paramiko: the lean path may apply
        assert not sender.applies()  # but not before AES-GCM keys are in place

        other = paramiko.Transport(left)
        del vars(other.packetizer)["_Packetizer__iv_out"]  # as if paramiko had changed
        assert fastsend._sender(other) is None
        assert fastsend.stats(other) is None
    finally:
        left.close()
        right.close()


# --- uploader check ----------------------------------------------------------------------------


def test_check_passes_every_item_on_a_good_server(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory) -> None:
    results = make_plugin(sftp_endpoint.config_section()).uploader_check()
    assert [(r.name, r.ok) for r in results] == [
        ("sftp: connect", True), ("sftp: host key", True), ("sftp: authentication", True),
        ("sftp: remote_video_dir writable", True), ("sftp: remote_json_dir writable", True),
    ]
    assert "aes128-gcm@openssh.com" in results[0].detail
    assert list(sftp_endpoint.local_video_dir.iterdir()) == []  # the probes are gone


def test_check_says_which_directory_is_unwritable(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory) -> None:
    plugin = make_plugin(sftp_endpoint.config_section())
    sftp_endpoint.local_json_dir.chmod(0o555)
    try:
        results = {r.name: r for r in plugin.uploader_check()}
    finally:
        sftp_endpoint.local_json_dir.chmod(0o755)
    assert results["sftp: remote_video_dir writable"].ok
    denied = results["sftp: remote_json_dir writable"]
    assert not denied.ok
    assert "permission denied" in denied.detail
    assert "uploader.sftp.remote_json_dir" in denied.detail


def test_check_reports_an_unreachable_server_without_raising(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory) -> None:
    results = make_plugin(sftp_endpoint.config_section(), port=free_port()).uploader_check()
    assert [r.ok for r in results] == [False] * 5
    assert "connection refused" in results[0].detail
    assert all("not checked" in r.detail for r in results[1:])


def test_check_reports_an_unknown_host_key(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(sftp_endpoint.config_section(),
                         known_hosts_path=str(tmp_path / "empty_known_hosts"))
    results = plugin.uploader_check()
    assert [r.ok for r in results] == [True, False, False, False, False]
    assert "not known" in results[1].detail


# --- other servers -----------------------------------------------------------------------------


def test_chrooted_openssh_account_sees_paths_inside_its_jail(
        sftp_chroot_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    assert sftp_chroot_endpoint.remote_video_dir.startswith("/upload/")
    plugin = make_plugin(sftp_chroot_endpoint.config_section())
    job = write_job(tmp_path, "evt_jailed", 1 * MiB)
    assert_uploaded(sftp_chroot_endpoint.endpoint, transfer(plugin, job), job)


def test_a_server_without_posix_rename_that_will_not_overwrite(
        hosted: AsyncsshSftpServer, make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(hosted_section(hosted))
    first = write_job(tmp_path / "a", "evt_hosted", 3 * MiB)

    receipt = transfer(plugin, first)

    # Paths are the jail's: "/videos" is <root>/videos on disk.
    assert receipt.remote_video_path == "/videos/evt_hosted.mp4"
    assert receipt.remote_json_path == "/json/evt_hosted.json"
    assert_uploaded(hosted.endpoint, receipt, first)
    assert (hosted.root / "videos" / "evt_hosted.mp4").exists()
    assert [op[0] for op in hosted.operations] == ["posix-rename", "rename", "rename"]

    hosted.operations.clear()
    second = write_job(tmp_path / "b", "evt_hosted", 2 * MiB, b'{"eventId": "evt_hosted"}')
    assert_uploaded(hosted.endpoint, transfer(plugin, second), second)
    # posix-rename is not asked for again on this connection; the final files are replaced.
    assert [op[0] for op in hosted.operations] == ["rename", "remove", "rename"] * 2


def test_a_full_remote_disk_is_endpoint_unavailable(
        hosted: AsyncsshSftpServer, make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(hosted_section(hosted))
    job = write_job(tmp_path, "evt_full", 4 * MiB)
    # Fails among the last writes, which paramiko itself never checks.
    hosted.quota_bytes = job.video_size - 100_000

    with pytest.raises(EndpointUnavailable, match="disk full") as caught:
        transfer(plugin, job)

    assert caught.value.endpoint == "sftp"
    assert not (hosted.root / "videos" / "evt_full.mp4").exists()
    hosted.quota_bytes = None
    assert_uploaded(hosted.endpoint, transfer(plugin, job), job)


def test_an_upload_never_continues_past_a_write_the_server_refused(
        hosted: AsyncsshSftpServer, make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(hosted_section(hosted))
    job = write_job(tmp_path, "evt_gap", 6 * MiB + 4321)
    # One write fails as on a full disk; the ones already sent behind it are stored: the
    # temporary file has a gap that sampling its blocks need not find.
    hosted.refuse_one_write_from = 2 * MiB

    with pytest.raises(EndpointUnavailable, match="disk full"):
        transfer(plugin, job)
    progress: list[int] = []
    receipt = transfer(plugin, job, lambda done, total: progress.append(done))

    assert_uploaded(hosted.endpoint, receipt, job)
    # Every byte from the refused write on was sent again (writes are at most 256 KiB).
    assert min(progress) <= 2 * MiB + 256 * 1024, progress[:3]


def test_a_server_that_loses_writes_is_caught_by_the_size_check(
        hosted: AsyncsshSftpServer, make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = make_plugin(hosted_section(hosted))
    job = write_job(tmp_path, "evt_short", 1 * MiB)
    hosted.lose_writes_after = job.video_size - 10

    with pytest.raises(TransientError, match="after 1048576 were sent") as caught:
        transfer(plugin, job)

    assert not isinstance(caught.value, EndpointUnavailable)
    assert not (hosted.root / "videos" / "evt_short.mp4").exists()


# --- resume sampling and pacing, without a server ----------------------------------------------


@pytest.mark.parametrize("length", [1, 1000, 64 * 1024, 64 * 1024 + 1, 200 * 1024, 50 * MiB])
def test_the_blocks_read_back_cover_the_tail_and_never_overlap(length: int) -> None:
    from uploader_plugins.sftp.resume import TAIL_BYTES, sample_blocks

    for _ in range(20):
        blocks = sample_blocks(length)
        assert blocks == sorted(blocks)
        assert blocks[-1] == (max(0, length - TAIL_BYTES), min(length, TAIL_BYTES))
        ends = [0] + [at + size for at, size in blocks]
        assert all(at >= end for (at, _), end in zip(blocks, ends, strict=False))
        assert sum(size for _, size in blocks) <= 256 * 1024


def test_the_rate_limiter_sleeps_once_per_deficit_and_wakes_on_a_new_rate() -> None:
    from uploader_plugins.sftp.throttle import RateLimiter

    limiter = RateLimiter(0)
    started = time.monotonic()
    for _ in range(10_000):
        limiter.pace(32768)  # no cap: no pacing at all
    assert time.monotonic() - started < 0.5

    limiter.set_rate(100_000)
    started = time.monotonic()
    for _ in range(20):
        limiter.pace(10_000)  # 200 kB at 100 kB/s, less the 0.1 s burst and the last write
    assert 1.5 < time.monotonic() - started < 2.2

    limiter.set_rate(10)  # the next write of 10 kB stands for 1000 s of sleep
    limiter.pace(10_000)
    threading.Timer(0.3, limiter.set_rate, (0,)).start()
    started = time.monotonic()
    limiter.pace(10_000)
    assert time.monotonic() - started < 1.0

