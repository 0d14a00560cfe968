"""The SFTP plugin with ``transport: openssh`` against the real sshd the suite starts.

paramiko's SFTP client runs over OpenSSH's own client (``ssh ... -s sftp``) here: every test
records the sessions :func:`uploader_plugins.sftp.openssh.connect` makes (``ssh_sessions``), so
that it proves the OpenSSH path ran, and checks the outcome on the server's disk. Faults come
from the same relay as in test_sftp_plugin.py (:class:`FaultProxy`). No ``ssh`` process may
outlive the test that started it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import SftpDirs
from servers.keys import known_hosts_line, make_ed25519_key
from sftp_servers.asyncssh_server import asyncssh_sftp_server
from test_sftp_plugin import (
    FaultProxy,
    MiB,
    PluginFactory,
    _encrypted_openssh_key,
    assert_uploaded,
    free_port,
    interrupt_once_silent,
    make_plugin,
    proxy,
    transfer,
    via_proxy,
    write_job,
)

from uploader_core.config import validate
from uploader_core.errors import (
    ConfigurationError,
    EndpointUnavailable,
    Interrupted,
    TransientError,
)
from uploader_plugins.sftp import SftpPlugin, connection, openssh
from uploader_plugins.sftp.connection import Session

pytestmark = pytest.mark.integration

# Fixtures shared with test_sftp_plugin.py; imported so that pytest finds them in this module.
__all__ = ["make_plugin", "proxy", "via_proxy"]

OPENSSH = {"transport": "openssh"}
CHECK_NAMES = ["sftp: connect", "sftp: host key", "sftp: authentication",
                    "sftp: remote_video_dir writable", "sftp: remote_json_dir writable"]


# --- helpers -----------------------------------------------------------------------------------


def ssh_children() -> list[int]:
    """This process's child processes that run OpenSSH's client (zombies included).

    Reads only this process's own ``children`` lists: few file reads, which matters while a
    silent FaultProxy's relay threads spin for the GIL.
    """
    found = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids = (task / "children").read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        for pid in pids:
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:  # reaped meanwhile
                continue
            if comm == "ssh":
                found.append(int(pid))
    return found


def openssh_plugin(make_plugin: PluginFactory, section: dict[str, Any],
                   **overrides: Any) -> SftpPlugin:
    return make_plugin(section, **OPENSSH, **overrides)


def ssh_args(session: Session) -> list[str]:
    """The command line of the session's ssh process."""
    assert session.process is not None
    args = session.process.args
    assert isinstance(args, list)
    return [str(arg) for arg in args]


def ssh_option(args: list[str], name: str) -> str:
    """The value of the one ``-o name=value`` on an ssh command line."""
    values = [args[i + 1].split("=", 1)[1] for i, arg in enumerate(args[:-1])
              if arg == "-o" and args[i + 1].startswith(f"{name}=")]
    assert len(values) == 1, (name, args)
    return values[0]


def assert_ran_over_ssh(session: Session) -> None:
    """The session's SSH layer is an OpenSSH client process, not paramiko's transport."""
    assert session.transport is None
    args = ssh_args(session)
    assert os.path.basename(args[0]) == "ssh"
    assert args[-4:-2] == ["-s", "--"] and args[-1] == "sftp"


def reconfigure(plugin: SftpPlugin, section: dict[str, Any]) -> None:
    """A reload of ``uploader.sftp``, as the engine does it."""
    plugin.uploader_configure(config=validate({"uploader": {"sftp": section}},
                                              plugin.uploader_config_sections()))


def refused_upload(plugin: SftpPlugin, tmp_path: Path, event_id: str = "evt_x",
                   ) -> ConfigurationError:
    """The ConfigurationError a small upload ends with."""
    with pytest.raises(ConfigurationError) as caught:
        transfer(plugin, write_job(tmp_path, event_id, 1000))
    return caught.value


def assert_no_ssh_left(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while ssh_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ssh_children() == []


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def ssh_sessions(monkeypatch: pytest.MonkeyPatch) -> list[Session]:
    """Every session openssh.connect made during the test, in order."""
    made: list[Session] = []
    original = openssh.connect

    def connect(*args: Any, **kwargs: Any) -> Session:
        session = original(*args, **kwargs)
        made.append(session)
        return session

    monkeypatch.setattr(openssh, "connect", connect)
    return made


@pytest.fixture
def paramiko_never_connects(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """For tests whose outcome reads the same on both transports: fail if paramiko's own
    connection code is used at all."""
    used: list[object] = []
    original = connection.open_socket

    def open_socket(*args: Any, **kwargs: Any) -> Any:
        used.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(connection, "open_socket", open_socket)
    yield
    assert used == [], "paramiko's transport connected; transport openssh was ignored"


@pytest.fixture(autouse=True)
def no_leaked_ssh() -> Iterator[None]:
    """After the test and after its plugins are shut down, no ``ssh`` child is left.

    Autouse fixtures are set up before the ones a test asks for, so this one is torn down
    after ``make_plugin`` has shut every plugin down.
    """
    before = ssh_children()
    yield
    if before == []:
        assert_no_ssh_left()


# --- uploads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", [None, "aes256-ctr", "chacha20-poly1305@openssh.com"])
def test_an_upload_over_openssh_is_byte_identical_and_reports_its_sha256(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, ssh_sessions: list[Session],
        tmp_path: Path, cipher: str | None) -> None:
    overrides = {} if cipher is None else {"ciphers": [cipher]}
    plugin = openssh_plugin(make_plugin, sftp_endpoint.config_section(), **overrides)
    job = write_job(tmp_path / "pending", "evt_20261128T061512Z_cam03_0042", 5 * MiB + 123)
    calls: list[tuple[int, int]] = []

    receipt = transfer(plugin, job, lambda done, total: calls.append((done, total)))

    assert receipt.destination == "sftp"
    assert receipt.remote_video_path == f"{sftp_endpoint.remote_video_dir}/{job.event_id}.mp4"
    assert receipt.remote_json_path == f"{sftp_endpoint.remote_json_dir}/{job.event_id}.json"
    assert_uploaded(sftp_endpoint.endpoint, receipt, job)  # sha256 on disk == receipt's
    total = job.video_size + job.json_size
    assert calls[-1] == (total, total)
    assert len(calls) >= 5
    [session] = ssh_sessions
    assert_ran_over_ssh(session)
    assert session.process is not None and session.process.poll() is None  # kept for later
    if cipher is not None:
        assert ssh_option(ssh_args(session), "Ciphers") == cipher


def test_one_ssh_process_serves_every_job_and_exits_at_shutdown(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, ssh_sessions: list[Session],
        tmp_path: Path) -> None:
    plugin = openssh_plugin(make_plugin, sftp_endpoint.config_section())
    jobs = [write_job(tmp_path, f"evt_{n:03d}", 64 * 1024 + n) for n in range(6)]

    for job in jobs:
        assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)

    [session] = ssh_sessions
    assert_ran_over_ssh(session)
    assert plugin.connections_made == 1
    assert session.process is not None
    assert session.process.poll() is None
    assert ssh_children() == [session.process.pid]

    started = time.monotonic()
    plugin.uploader_shutdown()
    took = time.monotonic() - started
    print(f"uploader_shutdown with a live ssh process: {took:.2f} s")

    assert session.process.returncode is not None
    assert ssh_children() == []
    assert took < 3


def test_the_socket_towards_ssh_holds_several_write_requests(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, ssh_sessions: list[Session],
        tmp_path: Path) -> None:
    plugin = openssh_plugin(make_plugin, sftp_endpoint.config_section())
    job = write_job(tmp_path, "evt_buffered", 2 * MiB)
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)

    [session] = ssh_sessions
    assert session.write_limit is not None
    # Linux reports twice the size asked for (its bookkeeping included), capped by wmem_max.
    wmem_max = int(Path("/proc/sys/net/core/wmem_max").read_text())
    granted = session.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert granted == 2 * min(openssh._SEND_BUFFER, wmem_max)
    assert 4 * session.write_limit <= openssh._SEND_BUFFER
    # paramiko's SFTP client waits in select() on this socket: nothing may be read ahead.
    assert not session.sock.reads_ahead


def test_a_kept_ssh_process_whose_link_died_is_replaced_within_the_same_job(
        sftp_endpoint: SftpDirs, proxy: FaultProxy, via_proxy: dict[str, Any],
        make_plugin: PluginFactory, ssh_sessions: list[Session], tmp_path: Path) -> None:
    plugin = openssh_plugin(make_plugin, via_proxy)
    transfer(plugin, write_job(tmp_path, "evt_one", 100_000))
    proxy.cut_next.set()  # the idle connection looks fine until it is used

    job = write_job(tmp_path, "evt_two", 100_000)
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)

    first, second = ssh_sessions
    assert first.process is not None and second.process is not None
    assert first.process.returncode is not None  # the dead one was reaped
    assert second.process.poll() is None


def test_a_job_stopped_by_the_engine_keeps_the_ssh_process_and_quarantine_cleans_up(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, ssh_sessions: list[Session],
        tmp_path: Path) -> None:
    plugin = openssh_plugin(make_plugin, sftp_endpoint.config_section())
    job = write_job(tmp_path, "evt_stopped", 8 * MiB)

    def stop(done: int, total: int) -> None:
        raise Interrupted("the uploader is stopping")

    with pytest.raises(Interrupted):
        transfer(plugin, job, stop)

    videos = sftp_endpoint.local_video_dir
    part = videos / ".evt_stopped.mp4.part"
    assert not (videos / "evt_stopped.mp4").exists()
    assert 0 < part.stat().st_size < job.video_size
    [session] = ssh_sessions
    assert session.process is not None and session.process.poll() is None  # still usable

    plugin.post_quarantine(event_id=job.event_id, reason="test")  # over the same ssh

    assert not part.exists()
    other = write_job(tmp_path / "next", "evt_next", 100_000)
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, other), other)
    assert len(ssh_sessions) == 1


def test_a_reload_that_switches_the_transport_reconnects_through_the_new_one(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, ssh_sessions: list[Session],
        tmp_path: Path) -> None:
    section = sftp_endpoint.config_section()
    plugin = make_plugin(section)  # paramiko's transport
    first = write_job(tmp_path / "a", "evt_paramiko", 100_000)
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, first), first)
    assert ssh_sessions == []

    reconfigure(plugin, {**section, **OPENSSH})
    second = write_job(tmp_path / "b", "evt_openssh", 100_000)
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, second), second)
    [session] = ssh_sessions
    assert_ran_over_ssh(session)
    assert plugin.connections_made == 2

    reconfigure(plugin, section)  # back to paramiko: the ssh process is ended at once
    assert session.process is not None and session.process.returncode is not None
    third = write_job(tmp_path / "c", "evt_back", 100_000)
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, third), third)
    assert len(ssh_sessions) == 1 and plugin.connections_made == 3


def test_the_bandwidth_cap_paces_uploads_over_openssh(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, ssh_sessions: list[Session],
        tmp_path: Path) -> None:
    plugin = openssh_plugin(make_plugin, sftp_endpoint.config_section())
    transfer(plugin, write_job(tmp_path / "warm", "evt_warm", 1000))  # ssh is started
    reconfigure(plugin, {**sftp_endpoint.config_section(), **OPENSSH,
                         "bandwidth_limit_kbps": 1600})  # 200 kB/s
    job = write_job(tmp_path / "pending", "evt_capped", 400_000)

    started = time.monotonic()
    receipt = transfer(plugin, job)
    took = time.monotonic() - started
    print(f"400 kB at 200 kB/s over openssh: {took:.2f} s")

    assert_uploaded(sftp_endpoint.endpoint, receipt, job)
    assert 1.5 < took < 4.0
    assert len(ssh_sessions) == 1  # a new cap is not a new connection


def test_openssh_without_an_ssh_client_is_a_configuration_error(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no ssh there
    with pytest.raises(ConfigurationError) as caught:
        openssh_plugin(make_plugin, sftp_endpoint.config_section())
    assert caught.value.setting == "uploader.sftp.transport"
    assert "ssh" in caught.value.message


# --- host keys ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("paramiko_never_connects")
def test_an_unknown_host_is_refused_by_openssh_under_the_strict_policy(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    plugin = openssh_plugin(make_plugin, sftp_endpoint.config_section(),
                            known_hosts_path=str(known))

    error = refused_upload(plugin, tmp_path)

    assert error.setting == "uploader.sftp.known_hosts_path"
    assert error.endpoint == "sftp"
    assert str(known) in error.message
    assert "Host key verification failed" in error.message  # what ssh said
    assert known.read_text() == ""
    assert not list(sftp_endpoint.local_video_dir.iterdir())


def test_accept_new_lets_openssh_record_an_unknown_host(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    endpoint = sftp_endpoint.endpoint
    known = tmp_path / "known_hosts"
    known.write_text("")
    section = {**sftp_endpoint.config_section(), "known_hosts_path": str(known)}
    plugin = openssh_plugin(make_plugin, section, host_key_policy="accept-new")
    job = write_job(tmp_path, "evt_first", 1000)

    with caplog.at_level("WARNING", logger="uploader_plugins.sftp"):
        assert_uploaded(endpoint, transfer(plugin, job), job)

    # Said in the log, as the paramiko transport says it, with OpenSSH's own line.
    [warning] = [r.getMessage() for r in caplog.records if "recorded the host key" in
                 r.getMessage()]
    assert f"recorded the host key of [127.0.0.1]:{endpoint.port}" in warning
    assert "Permanently added" in warning and str(known) in warning

    recorded = [line.split() for line in known.read_text().splitlines()]
    expected = endpoint.known_hosts_path.read_text().split()
    assert [fields[:3] for fields in recorded] == [expected[:3]]
    assert recorded[0][0] == f"[127.0.0.1]:{endpoint.port}"
    # What was recorded is what a strict plugin, on either transport, trusts from now on.
    for transport in ("openssh", "paramiko"):
        strict = make_plugin(section, transport=transport)
        assert_uploaded(endpoint, transfer(strict, job), job)


def test_accept_new_over_openssh_creates_the_known_hosts_directory(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    """As the paramiko transport does (test_accept_new_records_an_unknown_host_like_openssh);
    ssh creates neither the directory nor a private file, and would go on without pinning."""
    known = tmp_path / "new" / "known_hosts"
    plugin = openssh_plugin(make_plugin, sftp_endpoint.config_section(),
                            known_hosts_path=str(known), host_key_policy="accept-new")
    job = write_job(tmp_path, "evt_first", 1000)

    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)

    assert known.read_text().split()[:3] == \
        sftp_endpoint.endpoint.known_hosts_path.read_text().split()[:3]
    assert known.parent.stat().st_mode & 0o777 == 0o700
    assert known.stat().st_mode & 0o777 == 0o600


@pytest.mark.usefixtures("paramiko_never_connects")
def test_accept_new_over_openssh_refuses_a_host_key_it_cannot_record(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    """Accepting a key that was not recorded would accept any key next time."""
    known = tmp_path / "read-only" / "known_hosts"
    known.parent.mkdir()
    known.touch()
    known.parent.chmod(0o500)
    known.chmod(0o400)
    plugin = openssh_plugin(make_plugin, sftp_endpoint.config_section(),
                            known_hosts_path=str(known), host_key_policy="accept-new")
    try:
        # root writes whatever the modes say: make the file unwritable another way.
        if os.access(known, os.W_OK):
            known.unlink()
            known.mkdir()  # a directory where the file should be
        with pytest.raises(ConfigurationError) as caught:
            transfer(plugin, write_job(tmp_path, "evt_unrecorded", 1000))
    finally:
        known.parent.chmod(0o700)
    assert caught.value.setting == "uploader.sftp.known_hosts_path"
    assert "cannot record the host key of" in caught.value.message
    assert ssh_children() == []


@pytest.mark.parametrize("transport", ["paramiko", "openssh"])
def test_a_known_hosts_path_with_a_space_or_percent_is_one_file(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path,
        transport: str) -> None:
    # ssh splits an unquoted option value at spaces and expands % tokens in file names.
    known = tmp_path / "host keys 100%d" / "known_hosts"
    known.parent.mkdir()
    known.write_bytes(sftp_endpoint.endpoint.known_hosts_path.read_bytes())
    plugin = make_plugin(sftp_endpoint.config_section(), known_hosts_path=str(known),
                         transport=transport)
    job = write_job(tmp_path, "evt_spaced", 1000)
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)


@pytest.mark.parametrize("policy", ["strict", "accept-new"])
@pytest.mark.usefixtures("paramiko_never_connects")
def test_a_changed_host_key_is_refused_by_openssh_whatever_the_policy(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path,
        policy: str) -> None:
    endpoint = sftp_endpoint.endpoint
    impostor = make_ed25519_key(tmp_path / "other_host_key", "someone else")
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_line(endpoint.host, endpoint.port, impostor))
    before = known.read_text()
    plugin = openssh_plugin(make_plugin, sftp_endpoint.config_section(),
                            known_hosts_path=str(known), host_key_policy=policy)

    error = refused_upload(plugin, tmp_path)

    assert error.setting == "uploader.sftp.known_hosts_path"
    assert f"OpenSSH refused its host key against {known}" in error.message
    # What ssh said (its last lines); the key was not merely unknown.
    assert f"Host key for [{endpoint.host}]:{endpoint.port} has changed" in error.message
    assert known.read_text() == before
    assert not list(sftp_endpoint.local_video_dir.iterdir())


# --- credentials -------------------------------------------------------------------------------


@pytest.mark.usefixtures("paramiko_never_connects")
def test_a_key_the_server_does_not_know_is_refused_through_openssh(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    make_ed25519_key(stranger, "not authorized")
    plugin = openssh_plugin(make_plugin, sftp_endpoint.config_section(),
                            ssh_key_path=str(stranger))

    error = refused_upload(plugin, tmp_path)

    assert error.setting == "uploader.sftp.ssh_key_path"
    assert error.endpoint == "sftp"
    assert str(stranger) in error.message
    assert repr(sftp_endpoint.endpoint.username) in error.message
    assert "Permission denied" in error.message  # what ssh said


def test_an_unreadable_key_stops_openssh_configuration(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        openssh_plugin(make_plugin, sftp_endpoint.config_section(),
                       ssh_key_path=str(tmp_path / "absent"))
    assert caught.value.setting == "uploader.sftp.ssh_key_path"
    assert ssh_children() == []  # nothing was started to find out


@pytest.mark.usefixtures("paramiko_never_connects")
def test_a_key_others_can_read_is_refused_by_openssh_naming_the_key_setting(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    """paramiko would use it; OpenSSH will not, so it stops the engine at start-up."""
    loose = tmp_path / "loose_key"
    loose.write_bytes(sftp_endpoint.endpoint.key_path.read_bytes())
    loose.chmod(0o644)

    with pytest.raises(ConfigurationError) as caught:
        openssh_plugin(make_plugin, sftp_endpoint.config_section(), ssh_key_path=str(loose))

    assert caught.value.setting == "uploader.sftp.ssh_key_path"
    assert f"chmod 600 {loose}" in caught.value.message
    assert "mode 0644" in caught.value.message
    assert ssh_children() == []


@pytest.mark.usefixtures("paramiko_never_connects")
def test_a_key_file_ssh_cannot_load_is_reported_from_what_ssh_said(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    """Its permissions changed after start-up: ssh's own words name the problem."""
    key = tmp_path / "key"
    key.write_bytes(sftp_endpoint.endpoint.key_path.read_bytes())
    key.chmod(0o600)
    plugin = openssh_plugin(make_plugin, sftp_endpoint.config_section(), ssh_key_path=str(key))
    key.chmod(0o644)

    error = refused_upload(plugin, tmp_path, "evt_loose")

    assert error.setting == "uploader.sftp.ssh_key_path"
    assert str(key) in error.message
    assert "bad permissions" in error.message  # what ssh said


@pytest.mark.parametrize("how", ["inline", "env"])
def test_a_passphrase_is_refused_with_openssh_and_never_shown(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, how: str) -> None:
    passphrase = "correct horse battery staple"
    encrypted = tmp_path / "encrypted_key"
    encrypted.write_bytes(_encrypted_openssh_key(sftp_endpoint.endpoint.key_path, passphrase))
    encrypted.chmod(0o600)
    section = {**sftp_endpoint.config_section(), "ssh_key_path": str(encrypted)}
    if how == "inline":
        overrides = {"ssh_key_passphrase": passphrase}
    else:
        monkeypatch.setenv("TEST_SFTP_KEY_PASSPHRASE", passphrase)
        overrides = {"ssh_key_passphrase_env": "TEST_SFTP_KEY_PASSPHRASE"}

    with pytest.raises(ConfigurationError) as caught:
        openssh_plugin(make_plugin, section, **overrides)

    assert caught.value.setting == "uploader.sftp.ssh_key_passphrase"
    assert "uploader.sftp.ssh_key_passphrase" in caught.value.message
    assert passphrase not in str(caught.value)
    assert passphrase not in caplog.text
    # The same key and passphrase are fine with paramiko's transport.
    plugin = make_plugin(section, **overrides)
    job = write_job(tmp_path, "evt_secret", 1000)
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)


def test_an_encrypted_key_without_passphrase_stops_openssh_configuration(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    """ssh in batch mode cannot ask for the passphrase: said at start-up, not as a refused
    login at the first connection."""
    encrypted = tmp_path / "encrypted_key"
    encrypted.write_bytes(_encrypted_openssh_key(sftp_endpoint.endpoint.key_path, "secret"))
    encrypted.chmod(0o600)

    with pytest.raises(ConfigurationError) as caught:
        openssh_plugin(make_plugin, sftp_endpoint.config_section(), ssh_key_path=str(encrypted))

    assert caught.value.setting == "uploader.sftp.ssh_key_path"
    assert f"private key {encrypted} is encrypted" in caught.value.message
    assert ssh_children() == []


# --- ciphers -----------------------------------------------------------------------------------


def test_a_cipher_unknown_to_openssh_stops_configuration(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory) -> None:
    with pytest.raises(ConfigurationError) as caught:
        openssh_plugin(make_plugin, sftp_endpoint.config_section(),
                       ciphers=["aes128-gcm@openssh.com", "rot13-ctr@example.com"])
    assert caught.value.setting == "uploader.sftp.ciphers"
    assert "not supported: rot13-ctr@example.com" in caught.value.message
    assert "chacha20-poly1305@openssh.com" in caught.value.message  # says what would work


def test_chacha20_which_paramiko_lacks_is_accepted_with_openssh(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, ssh_sessions: list[Session],
        tmp_path: Path) -> None:
    section = sftp_endpoint.config_section()
    only_chacha = {"ciphers": ["chacha20-poly1305@openssh.com"]}
    with pytest.raises(ConfigurationError):
        make_plugin(section, **only_chacha)  # paramiko's transport cannot
    plugin = openssh_plugin(make_plugin, section, **only_chacha)
    job = write_job(tmp_path, "evt_chacha", 2 * MiB + 11)

    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)

    [session] = ssh_sessions
    assert_ran_over_ssh(session)
    assert ssh_option(ssh_args(session), "Ciphers") == "chacha20-poly1305@openssh.com"


def test_openssh_falls_back_to_the_next_configured_cipher_the_server_has(
        tmp_path: Path, make_plugin: PluginFactory, ssh_sessions: list[Session]) -> None:
    with asyncssh_sftp_server(tmp_path / "ctr_only", ciphers=["aes256-ctr"]) as server:
        for name in ("videos", "json"):
            (server.root / name).mkdir()
        plugin = openssh_plugin(make_plugin, server.endpoint.config_section("/videos", "/json"))
        job = write_job(tmp_path / "pending", "evt_ctr", 1 * MiB + 3)

        assert_uploaded(server.endpoint, transfer(plugin, job), job)  # defaults end in CTR

        [session] = ssh_sessions
        assert_ran_over_ssh(session)
        plugin.uploader_shutdown()


def test_a_server_with_no_cipher_in_common_names_the_ciphers_setting(
        tmp_path: Path, make_plugin: PluginFactory) -> None:
    with asyncssh_sftp_server(tmp_path / "ctr_only", ciphers=["aes256-ctr"]) as server:
        for name in ("videos", "json"):
            (server.root / name).mkdir()
        only_gcm = openssh_plugin(make_plugin, server.endpoint.config_section("/videos", "/json"),
                                  ciphers=["aes128-gcm@openssh.com"])

        with pytest.raises(ConfigurationError) as caught:
            transfer(only_gcm, write_job(tmp_path / "pending", "evt_ctr", 1000))

        assert caught.value.setting == "uploader.sftp.ciphers"
        assert "no cipher in common" in caught.value.message


# --- unreachable servers, dead links and interrupts --------------------------------------------


@pytest.mark.usefixtures("paramiko_never_connects")
def test_nothing_listening_is_endpoint_unavailable_through_openssh(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    plugin = openssh_plugin(make_plugin, sftp_endpoint.config_section(), port=free_port())

    with pytest.raises(EndpointUnavailable) as caught:
        transfer(plugin, write_job(tmp_path, "evt_nobody", 1000))

    assert not isinstance(caught.value, ConfigurationError)
    assert caught.value.endpoint == "sftp"
    assert "connection refused" in caught.value.message
    assert ssh_children() == []


@pytest.mark.faults
def test_a_connection_cut_mid_upload_over_openssh_leaves_only_the_temporary_file(
        sftp_endpoint: SftpDirs, proxy: FaultProxy, via_proxy: dict[str, Any],
        make_plugin: PluginFactory, ssh_sessions: list[Session], tmp_path: Path) -> None:
    plugin = openssh_plugin(make_plugin, via_proxy)
    job = write_job(tmp_path, "evt_cut", 16 * MiB)
    proxy.cut_after = 6 * MiB

    with pytest.raises(EndpointUnavailable) as caught:
        transfer(plugin, job)

    assert isinstance(caught.value, TransientError)  # retried on a later pass
    assert caught.value.endpoint == "sftp"
    videos = sftp_endpoint.local_video_dir
    assert not (videos / "evt_cut.mp4").exists()
    assert (videos / ".evt_cut.mp4.part").stat().st_size < job.video_size
    [cut] = ssh_sessions
    assert cut.process is not None and cut.process.returncode is not None

    proxy.cut_after = None
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)
    assert len(ssh_sessions) == 2
    assert_ran_over_ssh(ssh_sessions[1])


@pytest.mark.faults
def test_a_silent_link_under_openssh_times_out_instead_of_hanging(
        sftp_endpoint: SftpDirs, proxy: FaultProxy, via_proxy: dict[str, Any],
        make_plugin: PluginFactory, ssh_sessions: list[Session], tmp_path: Path) -> None:
    plugin = openssh_plugin(make_plugin, via_proxy, timeout_seconds=2.0)
    job = write_job(tmp_path, "evt_silent", 32 * MiB)

    def go_silent(done: int, total: int) -> None:
        proxy.silent.set()

    started = time.monotonic()
    with pytest.raises(EndpointUnavailable) as caught:
        transfer(plugin, job, go_silent)
    took = time.monotonic() - started
    print(f"silent link, timeout 2 s: EndpointUnavailable after {took:.2f} s: {caught.value}")
    assert took < 20
    assert caught.value.endpoint == "sftp"
    assert "no answer" in caught.value.message
    assert not (sftp_endpoint.local_video_dir / "evt_silent.mp4").exists()
    [stalled] = ssh_sessions
    assert stalled.process is not None and stalled.process.returncode is not None

    proxy.silent.clear()  # the link comes back: a new ssh process is started
    assert_uploaded(sftp_endpoint.endpoint, transfer(plugin, job), job)
    assert len(ssh_sessions) == 2


@pytest.mark.faults
@pytest.mark.usefixtures("paramiko_never_connects")
def test_a_server_that_never_greets_openssh_times_out(
        proxy: FaultProxy, via_proxy: dict[str, Any], make_plugin: PluginFactory,
        tmp_path: Path) -> None:
    proxy.silent.set()
    plugin = openssh_plugin(make_plugin, via_proxy, timeout_seconds=1.0)

    started = time.monotonic()
    with pytest.raises(EndpointUnavailable) as caught:
        transfer(plugin, write_job(tmp_path, "evt_mute", 1000))
    took = time.monotonic() - started
    print(f"mute server, timeout 1 s: EndpointUnavailable after {took:.2f} s: {caught.value}")

    assert took < 10
    assert "no answer" in caught.value.message or "timed out" in caught.value.message
    assert ssh_children() == []


@pytest.mark.faults
def test_interrupt_stops_an_upload_over_openssh_stalled_on_a_silent_link(
        sftp_endpoint: SftpDirs, proxy: FaultProxy, via_proxy: dict[str, Any],
        make_plugin: PluginFactory, ssh_sessions: list[Session], tmp_path: Path) -> None:
    plugin = openssh_plugin(make_plugin, via_proxy, timeout_seconds=60.0)
    took = interrupt_once_silent(plugin, proxy, tmp_path)
    print(f"interrupt on a silent link: Interrupted {took:.2f} s after uploader_interrupt()")

    assert took < 5
    assert not (sftp_endpoint.local_video_dir / "evt_stalled.mp4").exists()
    [session] = ssh_sessions
    assert_ran_over_ssh(session)
    assert session.process is not None and session.process.returncode is not None
    assert ssh_children() == []


@pytest.mark.faults
@pytest.mark.usefixtures("paramiko_never_connects")
def test_interrupt_stops_openssh_waiting_on_a_server_that_says_nothing(
        proxy: FaultProxy, via_proxy: dict[str, Any], make_plugin: PluginFactory,
        tmp_path: Path) -> None:
    proxy.silent.set()
    plugin = openssh_plugin(make_plugin, via_proxy, timeout_seconds=60.0)
    threading.Timer(0.5, plugin.uploader_interrupt).start()

    started = time.monotonic()
    with pytest.raises(Interrupted):
        transfer(plugin, write_job(tmp_path, "evt_mute", 1000))
    took = time.monotonic() - started
    print(f"interrupt while connecting: Interrupted {took:.2f} s after the transfer began")

    assert took < 5
    assert ssh_children() == []
    with pytest.raises(Interrupted):  # stopping is final for this run: no new ssh is started
        transfer(plugin, write_job(tmp_path, "evt_mute", 1000))
    assert ssh_children() == []


# --- uploader check ----------------------------------------------------------------------------


@pytest.mark.usefixtures("paramiko_never_connects")
def test_check_over_openssh_passes_every_item_on_a_good_server(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory) -> None:
    results = openssh_plugin(make_plugin, sftp_endpoint.config_section()).uploader_check()

    assert [(r.name, r.ok) for r in results] == [(name, True) for name in CHECK_NAMES]
    assert "OpenSSH" in results[0].detail
    assert list(sftp_endpoint.local_video_dir.iterdir()) == []  # the probes are gone
    assert list(sftp_endpoint.local_json_dir.iterdir()) == []
    assert ssh_children() == []  # the check's ssh process is gone too


@pytest.mark.usefixtures("paramiko_never_connects")
def test_check_over_openssh_reports_an_unknown_host_key(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    known = tmp_path / "empty_known_hosts"
    known.write_text("")
    plugin = openssh_plugin(make_plugin, sftp_endpoint.config_section(),
                            known_hosts_path=str(known))

    results = plugin.uploader_check()

    assert [r.name for r in results] == CHECK_NAMES
    assert [r.ok for r in results] == [True, False, False, False, False]
    assert f"OpenSSH refused its host key against {known}" in results[1].detail
    assert all("not checked" in r.detail for r in results[2:])


@pytest.mark.usefixtures("paramiko_never_connects")
def test_check_over_openssh_reports_a_refused_key_at_authentication(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, tmp_path: Path) -> None:
    make_ed25519_key(tmp_path / "stranger", "not authorized")
    plugin = openssh_plugin(make_plugin, sftp_endpoint.config_section(),
                            ssh_key_path=str(tmp_path / "stranger"))

    results = plugin.uploader_check()

    assert [r.ok for r in results] == [True, True, False, False, False]
    assert "uploader.sftp.ssh_key_path" in results[2].detail
    assert "Permission denied" in results[2].detail  # what ssh said
    assert all("not checked" in r.detail for r in results[3:])


@pytest.mark.usefixtures("paramiko_never_connects")
def test_check_over_openssh_reports_an_unreachable_server(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory) -> None:
    results = openssh_plugin(make_plugin, sftp_endpoint.config_section(),
                             port=free_port()).uploader_check()
    assert [r.ok for r in results] == [False] * 5
    assert "connection refused" in results[0].detail
    assert all("not checked" in r.detail for r in results[1:])


# --- the command line --------------------------------------------------------------------------


def test_the_ssh_command_line_carries_the_settings(
        sftp_endpoint: SftpDirs, make_plugin: PluginFactory, ssh_sessions: list[Session],
        tmp_path: Path) -> None:
    """What the session's ssh was started with: no user configuration, batch mode, this
    key and known_hosts file only, and timeouts from timeout_seconds."""
    plugin = openssh_plugin(make_plugin, sftp_endpoint.config_section(), timeout_seconds=7.5,
                            host_key_policy="accept-new")
    transfer(plugin, write_job(tmp_path, "evt_args", 1000))
    [session] = ssh_sessions
    args = ssh_args(session)
    endpoint = sftp_endpoint.endpoint

    def option(name: str) -> str:
        return ssh_option(args, name)

    assert args[args.index("-F") + 1] == "/dev/null"
    assert args[args.index("-i") + 1] == str(endpoint.key_path)
    assert args[args.index("-p") + 1] == str(endpoint.port)
    assert args[args.index("-l") + 1] == endpoint.username
    assert args[-4:] == ["-s", "--", endpoint.host, "sftp"]
    assert option("BatchMode") == "yes"
    assert option("IdentitiesOnly") == "yes"
    assert option("UserKnownHostsFile") == f'"{endpoint.known_hosts_path}"'
    assert option("GlobalKnownHostsFile") == "/dev/null"
    assert option("StrictHostKeyChecking") == "accept-new"
    assert option("ConnectTimeout") == "8"
    assert option("ServerAliveInterval") == "3"
    assert session.sock.gettimeout() == 7.5



