"""The SFTP plugin object: configuration, the one connection it keeps, and its hooks.

State lives in the instance, never in the module: every engine (and every test) gets its own
plugin object, so connections and interrupt requests never leak from one engine to another.

Threading: the engine never calls this object from two threads at once (``transfer_files``
runs on its worker's transfer thread, the other hooks on the worker's own), except
:meth:`SftpPlugin.uploader_interrupt`, which only sets a flag and shuts sockets down (see
:class:`.connection.Interrupter`).
The engine reconfigures plugins between transfers; should :meth:`SftpPlugin.uploader_configure`
come while one is under way all the same, the new bandwidth cap applies to it at once, and a
connection whose settings changed is dropped only once that transfer is over.

Temporary files of quarantined events: ``post_quarantine`` removes them on the server, over
the kept connection or a new one. When the server cannot be reached they are remembered and
removed at the next connection; until then no further connection is attempted for that
purpose, so that a server that is down does not cost a connection timeout per quarantined
package.
"""

from __future__ import annotations

import errno
import logging
import posixpath
import secrets
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

import paramiko

from uploader_core.config import Section, resolve_secret
from uploader_core.errors import ConfigurationError, Interrupted, PermanentJobError, UploaderError
from uploader_core.job import CheckResult, Job, ProgressCallback, TransferReceipt, UpcomingJob
from uploader_core.plugin import hookimpl

from . import connection, hostkeys, openssh
from .connection import Interrupter, Session
from .failures import ConnectionLost, RemoteOp, is_sftp_status, translate
from .lookahead import Lookahead
from .resume import PrefixHashes
from .settings import (
    OPENSSH,
    PREFIX,
    SECTION,
    SftpSettings,
    config_sections,
    load_private_key,
    setting,
)
from .throttle import RateLimiter
from .transfer import Transfer, safe_name, temporary_name

log = logging.getLogger(__name__)

CHECK_CONNECT = "sftp: connect"
CHECK_HOST_KEY = "sftp: host key"
CHECK_AUTH = "sftp: authentication"
CHECK_VIDEO_DIR = "sftp: remote_video_dir writable"
CHECK_JSON_DIR = "sftp: remote_json_dir writable"
CHECKS = (CHECK_CONNECT, CHECK_HOST_KEY, CHECK_AUTH, CHECK_VIDEO_DIR, CHECK_JSON_DIR)

# Temporary files of quarantined events still to remove, at most (the oldest are forgotten).
_MAX_LEFTOVERS = 10_000


def _local(exc: BaseException) -> bool:
    """An error of the job or of the engine, not of the server: no endpoint is named."""
    return isinstance(exc, UploaderError) and exc.endpoint is None


class SftpPlugin:
    """Uploads each job's video and JSON document to an SFTP server over one reused session.

    Built with no arguments; :meth:`uploader_configure` gives it its settings. It connects on
    the first transfer, keeps the connection for every later job, and makes a new one on the
    next use after any failure.
    """

    def __init__(self) -> None:
        self._settings: SftpSettings | None = None
        self._key: paramiko.PKey | None = None  # None with transport openssh
        self._key_identity = b""
        self._session: Session | None = None
        self._interrupter = Interrupter()
        self._limiter = RateLimiter()
        self._hashes = PrefixHashes()
        self._lookahead = Lookahead()  # the next job's files, opened ahead on the session
        self._transferring = False
        # The kept session was made with settings that have changed since: drop it at next use.
        self._session_outdated = False
        # Remote temporary files of quarantined events, to remove; in order of quarantine.
        self._leftovers: dict[str, None] = {}
        # A connection made only to remove leftovers failed: wait for the next transfer's.
        self._cleanup_deferred = False
        self.connections_made = 0  # SSH handshakes done by this plugin, for logs and tests

    # --- set-up and tear-down

    @hookimpl
    def uploader_config_sections(self) -> Mapping[str, Section]:
        return config_sections()

    @hookimpl
    def uploader_configure(self, config: Mapping[str, Any]) -> None:
        # Everything is read and checked before anything changes: a reload that fails keeps
        # the plugin on its old settings.
        settings = SftpSettings.from_config(config)
        key: paramiko.PKey | None
        if settings.transport == OPENSSH:
            # OpenSSH reads the key itself, at each connection.
            openssh.check_key(settings, resolve_secret(config[SECTION], "ssh_key_passphrase",
                                                       PREFIX))
            key, key_identity = None, b""
        else:
            key = load_private_key(config, settings.key_path)
            key_identity = key.asbytes()
        old, old_identity = self._settings, self._key_identity
        self._settings, self._key, self._key_identity = settings, key, key_identity
        self._limiter.set_rate(settings.bandwidth_bytes_per_second)
        if old is not None and (old.connection_settings != settings.connection_settings
                                or old_identity != key_identity):
            if self._session is not None:
                log.info("SFTP connection settings changed; the connection to %s will be "
                         "made again", old.address)
            if self._transferring:
                self._session_outdated = True  # the transfer under way keeps its connection
            else:
                self._drop_session()
        cap = (f"capped at {settings.bandwidth_limit_kbps:g} kbps"
               if settings.bandwidth_limit_kbps else "no bandwidth cap")
        log.debug("SFTP uploads go to %s@%s (ciphers %s; %s)", settings.username,
                  settings.address, ", ".join(settings.ciphers), cap)

    @hookimpl
    def uploader_interrupt(self) -> None:
        # Called from another thread: a flag and socket shutdowns, nothing that can block.
        with suppress(Exception):
            self._interrupter.interrupt()
        with suppress(Exception):
            self._limiter.wake()

    @hookimpl
    def uploader_shutdown(self) -> None:
        self._drop_session()
        # An engine that stopped may be run again: a new run starts uninterrupted.
        self._interrupter.reset()

    # --- phase 2

    @hookimpl
    def transfer_files(self, job: Job, progress: ProgressCallback,
                       upcoming: UpcomingJob) -> TransferReceipt:
        settings, _ = self._configured()
        if not safe_name(job.event_id):
            raise PermanentJobError(f"event id {job.event_id!r} cannot name a remote file")
        self._transferring = True
        try:
            return self._transfer(job, progress, settings, upcoming)
        finally:
            self._transferring = False

    def _transfer(self, job: Job, progress: ProgressCallback, settings: SftpSettings,
                  upcoming: UpcomingJob) -> TransferReceipt:
        total = job.video_size + job.json_size
        for attempt in (1, 2):
            self._interrupter.check(f"uploading {job.event_id}")
            session, reused = self._use_session()
            transfer = Transfer(session, settings, self._interrupter, progress, total,
                                limiter=self._limiter, hashes=self._hashes, upcoming=upcoming,
                                lookahead=self._lookahead)
            try:
                if self._leftovers:
                    self._remove_leftovers(session)
                return transfer.run(job)
            except ConnectionLost as exc:
                self._drop_session()
                if attempt == 1 and reused and not self._interrupter.requested:
                    log.info("%s: the SFTP connection kept from earlier jobs is gone (%s); "
                             "reconnecting", job.event_id, exc)
                    continue
                raise
            except BaseException as exc:
                # Keep a healthy connection when the job itself failed (its video changed, the
                # engine is stopping); after anything the server did, start afresh next time.
                if not (session.alive() and _local(exc)):
                    self._drop_session()
                if self._interrupter.requested and not isinstance(exc, Interrupted) \
                        and isinstance(exc, Exception):
                    raise Interrupted(f"upload of {job.event_id} abandoned: the uploader is "
                                      "stopping", endpoint="sftp") from exc
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    @hookimpl
    def post_quarantine(self, event_id: str, reason: str) -> None:
        """Remove the event's temporary files from the server; best effort, never raises."""
        try:
            self._forget_event(event_id)
        except Exception:  # never: whatever happens here must not disturb the engine
            log.warning("could not remove the temporary SFTP files of quarantined %r",
                        event_id, exc_info=True)

    def _forget_event(self, event_id: str) -> None:
        settings = self._settings
        if settings is None or not safe_name(event_id):
            # No upload was ever started under a name that is not a safe event id.
            return
        for directory, suffix in ((settings.remote_video_dir, ".mp4"),
                                  (settings.remote_json_dir, ".json")):
            path = posixpath.join(directory, temporary_name(f"{event_id}{suffix}"))
            self._leftovers.pop(path, None)
            self._leftovers[path] = None
        while len(self._leftovers) > _MAX_LEFTOVERS:
            del self._leftovers[next(iter(self._leftovers))]
        if self._interrupter.requested:
            return
        session = self._session
        if session is None or not session.alive() or self._session_outdated:
            if self._cleanup_deferred:
                return
            try:
                session, _ = self._use_session()
            except Exception as exc:
                self._cleanup_deferred = True
                log.info("temporary files of quarantined %s stay on the SFTP server until the "
                         "next connection: %s", event_id, exc)
                return
        try:
            self._remove_leftovers(session)
        except UploaderError as exc:
            self._drop_session()
            log.info("temporary files of quarantined %s stay on the SFTP server until the "
                     "next connection: %s", event_id, exc)

    # --- commands

    @hookimpl
    def uploader_check(self) -> list[CheckResult]:
        results: list[CheckResult] = []
        try:
            self._check(results)
        except Exception as exc:  # a check never raises: report what broke, and where
            name = CHECKS[len(results)] if len(results) < len(CHECKS) else CHECKS[-1]
            results.append(CheckResult(name=name, ok=False,
                                       detail=f"unexpected {type(exc).__name__}: {exc}"))
        done = {r.name for r in results}
        results.extend(CheckResult(name=name, ok=False, detail="not checked")
                       for name in CHECKS if name not in done)
        return results

    def _check(self, results: list[CheckResult]) -> None:
        def failed(index: int, exc: BaseException) -> None:
            results.append(CheckResult(name=CHECKS[index], ok=False, detail=str(exc)))
            for name in CHECKS[index + 1:]:
                results.append(CheckResult(name=name, ok=False,
                                           detail=f"not checked: {CHECKS[index]} failed"))

        try:
            settings, key = self._configured()
        except ConfigurationError as exc:
            failed(0, exc)
            return
        if key is None:
            self._check_openssh(settings, results, failed)
            return
        interrupter = self._interrupter
        sock: connection.StallGuardSocket | None = None
        transport: paramiko.Transport | None = None
        # An unreadable known_hosts file is a host key problem, reported as such below.
        known_error: ConfigurationError | None = None
        try:
            known = hostkeys.load_known_keys(settings)
        except ConfigurationError as exc:
            known, known_error = [], exc
        try:
            try:
                sock = connection.open_socket(settings, interrupter)
                transport = connection.handshake(sock, settings, known, interrupter)
            except UploaderError as exc:
                failed(0, exc)
                return
            results.append(CheckResult(
                name=CHECK_CONNECT, ok=True,
                detail=f"{settings.address}: {transport.remote_version}, cipher "
                       f"{transport.local_cipher}"))
            server_key = transport.get_remote_server_key()
            try:
                if known_error is not None:
                    raise known_error
                how = hostkeys.verify(settings, server_key, known)
            except UploaderError as exc:
                failed(1, exc)
                return
            results.append(CheckResult(
                name=CHECK_HOST_KEY, ok=True,
                detail=f"{server_key.get_name()} {hostkeys.fingerprint(server_key)} {how} in "
                       f"{settings.known_hosts_path}"))
            try:
                connection.authenticate(transport, sock, settings, key, interrupter)
                sftp = connection.open_sftp(transport, sock, settings, interrupter)
            except UploaderError as exc:
                failed(2, exc)
                return
            results.append(CheckResult(
                name=CHECK_AUTH, ok=True,
                detail=f"as {settings.username!r} with {settings.key_path}"))
            session = Session(sock=sock, sftp=sftp, transport=transport)
            for name, dir_key in ((CHECK_VIDEO_DIR, "remote_video_dir"),
                                  (CHECK_JSON_DIR, "remote_json_dir")):
                results.append(self._probe(session, settings, name, dir_key))
        finally:
            if sock is not None:
                interrupter.unregister(sock)
                connection.close_transport(transport, sock)

    def _check_openssh(self, settings: SftpSettings, results: list[CheckResult],
                       failed: Callable[[int, BaseException], None]) -> None:
        """The same checks when OpenSSH's client connects: it connects, checks the host key
        and authenticates in one go, so a failure is placed by the setting it names."""
        passed = [
            CheckResult(name=CHECK_CONNECT, ok=True,
                        detail=f"{settings.address}: reached by OpenSSH's client"),
            CheckResult(name=CHECK_HOST_KEY, ok=True,
                        detail=f"accepted by OpenSSH against {settings.known_hosts_path}"),
            CheckResult(name=CHECK_AUTH, ok=True,
                        detail=f"as {settings.username!r} with {settings.key_path}"),
        ]
        try:
            session = openssh.connect(settings, self._interrupter)
        except UploaderError as exc:
            stage = {setting("known_hosts_path"): 1, setting("ssh_key_path"): 2,
                     setting("username"): 2}.get(exc.setting or "", 0)
            results.extend(passed[:stage])
            failed(stage, exc)
            return
        results.extend(passed)
        try:
            for name, dir_key in ((CHECK_VIDEO_DIR, "remote_video_dir"),
                                  (CHECK_JSON_DIR, "remote_json_dir")):
                results.append(self._probe(session, settings, name, dir_key))
        finally:
            self._interrupter.unregister(session.sock)
            session.close()

    def _probe(self, session: Session, settings: SftpSettings, name: str,
               dir_key: str) -> CheckResult:
        """Write, measure and remove a small file, as an upload would."""
        directory = getattr(settings, dir_key)
        probe = posixpath.join(directory, f".uploader-check-{secrets.token_hex(6)}.tmp")
        content = b"uploader check\n"
        op = RemoteOp(f"writing a probe file in {directory}", setting(dir_key),
                      missing=f"remote directory {directory} does not exist on "
                              f"{settings.address}")
        try:
            with session.sftp.open(probe, "wb") as remote:
                remote.write(content)
            size = session.sftp.stat(probe).st_size
            session.sftp.remove(probe)
        except Exception as exc:
            error = translate(exc, op, session, self._interrupter, settings.timeout)
            return CheckResult(name=name, ok=False, detail=str(error))
        if size != len(content):
            return CheckResult(name=name, ok=False,
                               detail=f"{probe}: wrote {len(content)} bytes, the server "
                                      f"reports {size}")
        return CheckResult(name=name, ok=True,
                           detail=f"{directory}: created and removed a probe file")

    # --- the session

    def _configured(self) -> tuple[SftpSettings, paramiko.PKey | None]:
        if self._settings is None:
            raise ConfigurationError("the SFTP plugin was used before it was configured",
                                     setting=PREFIX)
        return self._settings, self._key

    def _connect(self) -> Session:
        settings, key = self._configured()
        if key is None:
            return openssh.connect(settings, self._interrupter)
        return connection.connect(settings, key, self._interrupter)

    def _use_session(self) -> tuple[Session, bool]:
        """The kept session if it is still alive, else a new one; and whether it was kept."""
        session = self._session
        if session is not None and self._session_outdated:
            self._drop_session()
            session = None
        if session is not None and session.alive():
            return session, True
        if session is not None:
            log.info("the SFTP connection to %s was lost; reconnecting",
                     self._configured()[0].address)
            self._drop_session()
        session = self._connect()
        self.connections_made += 1
        self._session = session
        self._cleanup_deferred = False
        return session, False

    def _remove_leftovers(self, session: Session) -> None:
        """Remove remembered temporary files; the ones that remain stay remembered.

        A file the server refuses to remove is reported and forgotten; a connection problem
        raises the engine's error for it.
        """
        settings, _ = self._configured()
        for path in list(self._leftovers):
            try:
                session.sftp.remove(path)
            except Exception as exc:
                missing = isinstance(exc, OSError) and exc.errno == errno.ENOENT
                if not missing and not is_sftp_status(exc, session):
                    raise translate(exc, RemoteOp(f"removing {path}"), session,
                                    self._interrupter, settings.timeout) from exc
                if not missing:
                    log.warning("cannot remove %s on %s: %s", path, settings.address, exc)
            else:
                log.info("removed %s on %s: its event was quarantined", path, settings.address)
            del self._leftovers[path]

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        self._session_outdated = False
        self._lookahead.forget()
        if session is not None:
            self._interrupter.unregister(session.sock)
            session.close()
