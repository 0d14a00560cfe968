"""A second SFTP server implementation for the tests: asyncssh's, shaped like hosted services.

OpenSSH is not the only server users upload to. This one runs asyncssh's own SFTP server in a
background thread and behaves the way many hosted SFTP services do:

- each session is jailed in a directory (asyncssh's ``chroot``), so the client names files
  from inside the jail (``/videos/x.mp4``);
- ``posix-rename@openssh.com`` is not offered, and a request for it is answered "Operation
  unsupported";
- a plain rename onto an existing file is refused (SFTPv3 "Failure").

Three faults can be injected: ``quota_bytes`` makes writes past that total fail the way a full
disk does on OpenSSH (a bare "Failure"), ``refuse_one_write_from`` makes the first write at or
beyond that offset fail the same way while the writes behind it succeed (space freed a moment
later: the file gets a gap), and ``lose_writes_after`` makes the server acknowledge writes past
that offset without storing them (a broken server the client must catch by checking sizes).
``operations`` records the rename-related requests it saw.

Only the server's behaviour is customised, by subclassing :class:`asyncssh.SFTPServer`; the
protocol is asyncssh's.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncssh
from servers import SftpEndpoint

USERNAME = "uploader"
_POSIX_RENAME = b"posix-rename@openssh.com"


class HostedStyleSFTPServer(asyncssh.SFTPServer):
    """asyncssh's SFTP server, jailed, without posix-rename and without overwriting renames."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], owner: AsyncsshSftpServer) -> None:
        super().__init__(chan, chroot=str(owner.root).encode())
        self._owner = owner

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        self._owner.operations.append(("posix-rename", oldpath.decode(), newpath.decode()))
        raise asyncssh.SFTPOpUnsupported("posix-rename is not offered by this server")

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        self._owner.operations.append(("rename", oldpath.decode(), newpath.decode()))
        # asyncssh's default refuses an existing target, as the SFTPv3 draft says.
        super().rename(oldpath, newpath)

    def remove(self, path: bytes) -> None:
        self._owner.operations.append(("remove", path.decode(), ""))
        super().remove(path)

    def write(self, file_obj: object, offset: int, data: bytes) -> Any:
        owner = self._owner
        if owner.lose_writes_after is not None and offset + len(data) > owner.lose_writes_after:
            return len(data)  # acknowledged, not stored
        with owner.lock:
            if owner.refuse_one_write_from is not None and offset >= owner.refuse_one_write_from:
                owner.refuse_one_write_from = None
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if owner.quota_bytes is not None:
            with owner.lock:
                if owner.written + len(data) > owner.quota_bytes:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                owner.written += len(data)
        return super().write(file_obj, offset, data)


class AsyncsshSftpServer:
    """asyncssh's SFTP server on a free loopback port, in a thread with its own event loop."""

    def __init__(self, workdir: Path, ciphers: Sequence[str] | None = None) -> None:
        self.workdir = workdir
        self._ciphers = list(ciphers) if ciphers is not None else None
        self.root = workdir / "jail"
        self.root.mkdir(parents=True)
        self.operations: list[tuple[str, str, str]] = []
        self.quota_bytes: int | None = None
        self.lose_writes_after: int | None = None
        self.refuse_one_write_from: int | None = None
        self.written = 0
        self.lock = threading.Lock()
        self._host_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.key_path = workdir / "client_key"
        self.key_path.touch(mode=0o600)
        self.key_path.write_bytes(client_key.export_private_key("openssh"))
        self._authorized = asyncssh.import_authorized_keys(
            client_key.export_public_key("openssh").decode()
        )
        self.known_hosts_path = workdir / "known_hosts"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="asyncssh-sftp",
                                        daemon=True)
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: list[asyncssh.SSHServerConnection] = []
        self.port = 0

    # --- lifecycle

    def start(self) -> None:
        self._thread.start()
        self._acceptor = self._run(self._listen())
        self.port = self._acceptor.get_port()
        public = self._host_key.export_public_key("openssh").decode().split()
        self.known_hosts_path.write_text(f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n")

    def close(self) -> None:
        if self._acceptor is not None:
            self._run(self._shutdown(self._acceptor, self._connections))
            self._acceptor = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    async def _listen(self) -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
            "127.0.0.1", 0,
            server_host_keys=[self._host_key],
            authorized_client_keys=self._authorized,
            password_auth=False, kbdint_auth=False,
            sftp_factory=lambda chan: HostedStyleSFTPServer(chan, self),
            allow_scp=False,
            acceptor=self._connections.append,
            **({} if self._ciphers is None else {"encryption_algs": self._ciphers}),
        )

    @staticmethod
    async def _shutdown(acceptor: asyncssh.SSHAcceptor,
                        connections: list[asyncssh.SSHServerConnection]) -> None:
        """Stop listening, end every session, and let their tasks finish before the loop ends."""
        acceptor.close()
        await acceptor.wait_closed()
        for conn in connections:
            conn.close()
        for conn in connections:
            await conn.wait_closed()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # --- what tests see

    @property
    def endpoint(self) -> SftpEndpoint:
        """Remote paths start at the jail: ``/`` on the client is ``root`` on disk."""
        return SftpEndpoint(host="127.0.0.1", port=self.port, username=USERNAME,
                            key_path=self.key_path, known_hosts_path=self.known_hosts_path,
                            root=self.root, remote_base="/")


@contextmanager
def asyncssh_sftp_server(workdir: Path,
                         ciphers: Sequence[str] | None = None) -> Iterator[AsyncsshSftpServer]:
    """A running server that does not advertise posix-rename; closed on exit.

    ``ciphers`` limits what the server offers (asyncssh's ``encryption_algs``).
    """
    # The list of extensions asyncssh advertises is a class attribute of its session handler;
    # it is narrowed only while this server runs. Clients that ignore the advertisement (as
    # paramiko does) still get "Operation unsupported" from the server above.
    handler = asyncssh.sftp.SFTPServerHandler
    advertised = handler._extensions
    handler._extensions = [ext for ext in advertised if ext[0] != _POSIX_RENAME]
    server = AsyncsshSftpServer(workdir, ciphers)
    try:
        server.start()
        yield server
    finally:
        server.close()
        handler._extensions = advertised
