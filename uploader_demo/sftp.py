"""A throwaway SFTP server for the demo: asyncssh's own, in a thread with its own event loop.

Only its behaviour is adjusted, by subclassing :class:`asyncssh.SFTPServer`: each session is
jailed in ``root`` and writes are paced to ``bytes_per_second``, like a field device's
cellular uplink, so that a transfer lasts long enough to watch. :meth:`outage` and
:meth:`restore` stop and restart the listener and drop every session, which is what an
engine sees when the network or the server goes away.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from .ports import free_port

USER = "demo"
REMOTE_VIDEO_DIR = "/videos"
REMOTE_JSON_DIR = "/json"
T = TypeVar("T")


class _PacedSFTPServer(asyncssh.SFTPServer):
    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], owner: ThrowawaySftp) -> None:
        super().__init__(chan, chroot=str(owner.root).encode())
        self._owner = owner

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        await asyncio.sleep(self._owner.pace(len(data)))
        result = super().write(file_obj, offset, data)
        return await result if isinstance(result, Awaitable) else result


class ThrowawaySftp:
    """``start()`` listens on a free loopback port; ``close()`` ends everything."""

    def __init__(self, directory: Path, bytes_per_second: float = 4e6) -> None:
        self.directory = directory
        self.root = directory / "jail"
        self.key_path = directory / "client_key"
        self.known_hosts_path = directory / "known_hosts"
        self.bytes_per_second = bytes_per_second
        self.port = 0
        self._next_free = 0.0
        self._host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._client_key = asyncssh.generate_private_key("ssh-ed25519")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="demo-sftp",
                                        daemon=True)
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: list[asyncssh.SSHServerConnection] = []

    def settings(self) -> dict[str, Any]:
        """The engine's ``uploader.sftp`` section for this server."""
        return {"host": "127.0.0.1", "port": self.port, "username": USER,
                "ssh_key_path": str(self.key_path),
                "known_hosts_path": str(self.known_hosts_path), "host_key_policy": "strict",
                "remote_video_dir": REMOTE_VIDEO_DIR, "remote_json_dir": REMOTE_JSON_DIR,
                "timeout_seconds": 5.0}

    @property
    def listening(self) -> bool:
        return self._acceptor is not None

    def pace(self, size: int) -> float:
        """Seconds a write of ``size`` bytes waits so the link keeps its speed (loop thread)."""
        now = time.monotonic()
        start = max(now, self._next_free)
        self._next_free = start + size / self.bytes_per_second
        return self._next_free - now

    def start(self) -> None:
        for directory in (self.root / REMOTE_VIDEO_DIR.strip("/"),
                          self.root / REMOTE_JSON_DIR.strip("/")):
            directory.mkdir(parents=True)
        self.key_path.touch(mode=0o600)
        self.key_path.write_bytes(self._client_key.export_private_key("openssh"))
        self._thread.start()
        self.port = free_port()
        self.restore()
        public = self._host_key.export_public_key("openssh").decode().split()
        self.known_hosts_path.write_text(f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n")

    def outage(self) -> None:
        """Stop listening and drop every session, as a server that went away."""
        self._call(self._stop_listening())

    def restore(self) -> None:
        """Listen again, on the same port."""
        if self._acceptor is None:
            self._acceptor = self._call(self._listen())

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    # --- on the server's loop

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(15)

    async def _listen(self) -> asyncssh.SSHAcceptor:
        authorized = asyncssh.import_authorized_keys(
            self._client_key.export_public_key("openssh").decode())
        return await asyncssh.listen(
            "127.0.0.1", self.port, server_host_keys=[self._host_key],
            authorized_client_keys=authorized, password_auth=False, kbdint_auth=False,
            sftp_factory=lambda chan: _PacedSFTPServer(chan, self), allow_scp=False,
            acceptor=self._connections.append)

    async def _stop_listening(self) -> None:
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.close()
            await acceptor.wait_closed()
        connections, self._connections[:] = list(self._connections), []
        for conn in connections:
            conn.close()
        for conn in connections:
            await conn.wait_closed()

    async def _shutdown(self) -> None:
        await self._stop_listening()
        # Session handlers still winding down would be destroyed pending with the loop.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
