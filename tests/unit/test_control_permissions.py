"""Only the engine's user and group may attach to the control socket (mode 0660).

Root bypasses file permissions, so the attempts are made by a throwaway unprivileged user,
from a subprocess that runs as that user.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from uploader_core.control import ControlServer

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                                reason="needs root and useradd to make a throwaway user")

# Runs as the throwaway user: what happens when it tries to attach.
PROBE = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
try:
    sock.connect(sys.argv[1])
except PermissionError:
    print("denied")
    sys.exit(0)
sock.sendall(b'{"id": 1, "cmd": "hello"}\\n')
print("attached" if json.loads(sock.makefile().readline())["ok"] else "refused")
"""


@pytest.fixture
def stranger() -> Iterator[pwd.struct_passwd]:
    name = f"upt{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Traversable by anyone (tmp_path is not), so that only the socket's own mode decides.
    directory = Path(tempfile.mkdtemp(prefix="upt-", dir="/tmp"))
    os.chmod(directory, 0o711)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def attempt(path: Path, user: pwd.struct_passwd, extra_groups: list[int]) -> str:
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    result = subprocess.run([python, "-c", PROBE, str(path)], user=user.pw_uid,
                            group=user.pw_gid, extra_groups=extra_groups, cwd="/",
                            env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_user_outside_the_group_cannot_attach(make_rig: Callable[..., Any],
                                               stranger: pwd.struct_passwd,
                                               socket_dir: Path) -> None:
    path = socket_dir / "u.sock"
    with ControlServer(make_rig().engine, path):
        socket_gid = path.stat().st_gid
        assert socket_gid not in os.getgrouplist(stranger.pw_name, stranger.pw_gid)
        assert attempt(path, stranger, extra_groups=[]) == "denied"
        # The same user, once in the socket's group, gets in: the mode decides, not the path.
        assert attempt(path, stranger, extra_groups=[socket_gid]) == "attached"


def test_the_group_setting_names_who_may_attach(make_rig: Callable[..., Any],
                                               stranger: pwd.struct_passwd,
                                               socket_dir: Path) -> None:
    path = socket_dir / "u.sock"
    group = pwd.getpwuid(stranger.pw_uid).pw_name  # the user's own group, from useradd
    with ControlServer(make_rig().engine, path, group=group):
        assert path.stat().st_gid == stranger.pw_gid
        assert attempt(path, stranger, extra_groups=[]) == "attached"
