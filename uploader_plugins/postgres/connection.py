"""One long-lived PostgreSQL connection, with a deadline on every statement.

libpq has no client-side statement timeout, and a server-side ``statement_timeout`` cannot
help when the server or the link stops answering. So each statement runs under a timer that,
when it fires, shuts the connection's socket down: the blocked call returns with an error, the
connection is dropped, and the next statement reconnects. The same shutdown serves the
engine's interrupt. ``statement_timeout`` is not sent as a startup option because connection
poolers such as PgBouncer refuse unknown startup parameters.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
from psycopg import errors as pgerrors

from uploader_core.deadline import DeadlineTimer
from uploader_core.errors import (
    ConfigurationError,
    EndpointUnavailable,
    Interrupted,
    PermanentJobError,
    TransientError,
    UploaderError,
)

ENDPOINT = "database"


class Database:
    """Connects lazily, reconnects after any failure, and translates psycopg's errors."""

    def __init__(self, params: Mapping[str, Any], *, statement_timeout: float, table: str) -> None:
        self._params = dict(params)
        self._timeout = statement_timeout
        self._table = table
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._interrupted = threading.Event()
        self._timed_out = False
        self._deadline = DeadlineTimer(self._on_deadline, "uploader-db-deadline")
        self.connects = 0  # how many connections were opened: reuse is a feature

    def same_settings(self, params: Mapping[str, Any], table: str,
                      statement_timeout: float) -> bool:
        return (dict(params), table, statement_timeout) == (self._params, self._table,
                                                             self._timeout)

    # --- connection lifetime
    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            if not _stale(self._conn):
                return self._conn
            # Closed by the server, a pooler restart or an idle reaper since the last job:
            # reconnect now rather than fail this job and back off.
            self.close()
        try:
            conn = psycopg.connect(autocommit=True, prepare_threshold=None, **self._params)
        except psycopg.Error as exc:
            raise self._connect_error(exc) from exc
        self.connects += 1
        with self._lock:
            self._conn = conn
        return conn

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def dispose(self) -> None:
        """Close for good: the connection and the deadline's thread."""
        self.close()
        self._deadline.close()

    def interrupt(self) -> None:
        self._interrupted.set()
        self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        with self._lock:
            conn = self._conn
            if conn is None or conn.closed:
                return
            try:
                fd = os.dup(conn.pgconn.socket)
            except Exception:
                return
        sock = socket.socket(fileno=fd)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _on_deadline(self) -> None:
        self._timed_out = True
        self._shutdown_socket()

    # --- running statements
    @contextlib.contextmanager
    def cursor(self, what: str) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor on the shared connection; errors arrive as the engine's own types."""
        if self._interrupted.is_set():
            raise Interrupted("the uploader is stopping")
        conn = self._connect()
        self._timed_out = False
        self._deadline.arm(self._timeout)
        try:
            with conn.cursor() as cur:
                yield cur
        except psycopg.Error as exc:
            error = self._statement_error(exc, what)
            if isinstance(error, (EndpointUnavailable, Interrupted)) or conn.broken:
                self.close()
            raise error from exc
        finally:
            self._deadline.disarm()

    # --- translation at the boundary
    def _connect_error(self, exc: psycopg.Error) -> UploaderError:
        text = str(exc).strip()
        where = f"{self._params.get('host')}:{self._params.get('port')}"
        sqlstate = exc.sqlstate or ""
        if self._interrupted.is_set():
            return Interrupted("the uploader is stopping")
        if sqlstate.startswith("28") or "password authentication failed" in text \
                or "no pg_hba.conf entry" in text or "no password supplied" in text:
            return ConfigurationError(
                f"database at {where} refused user {self._params.get('user')!r}: "
                f"{_first_line(text)}", endpoint=ENDPOINT, setting="uploader.database.password")
        if sqlstate == "3D000" or ("database" in text and "does not exist" in text):
            return ConfigurationError(f"database at {where}: {_first_line(text)}",
                                      endpoint=ENDPOINT, setting="uploader.database.dbname")
        if "SSL" in text or "certificate" in text:
            return ConfigurationError(f"database at {where}: TLS failed: {_first_line(text)}",
                                      endpoint=ENDPOINT, setting="uploader.database.sslmode")
        return EndpointUnavailable(f"cannot connect to the database at {where}: "
                                   f"{_first_line(text)}", endpoint=ENDPOINT)

    def _statement_error(self, exc: psycopg.Error, what: str) -> UploaderError:
        message = _first_line(str(exc))
        if isinstance(exc, pgerrors.UndefinedTable):
            return ConfigurationError(
                f"table {self._table} does not exist; create it with "
                "'uploader init-db -c CONFIG'", endpoint=ENDPOINT,
                setting="uploader.database.table")
        if isinstance(exc, pgerrors.UndefinedColumn):
            return ConfigurationError(
                f"table {self._table} lacks a column the uploader needs ({message}); "
                "run 'uploader init-db -c CONFIG' or migrate it", endpoint=ENDPOINT,
                setting="uploader.database.table")
        if isinstance(exc, pgerrors.InsufficientPrivilege):
            return ConfigurationError(f"{what}: {message}", endpoint=ENDPOINT,
                                      setting="uploader.database.user")
        if isinstance(exc, psycopg.DataError):
            return PermanentJobError(f"the database refused the metadata: {message}",
                                     endpoint=ENDPOINT)
        if isinstance(exc, pgerrors.QueryCanceled) and not self._interrupted.is_set() \
                and not self._timed_out:
            return EndpointUnavailable(f"{what}: the database cancelled the statement: "
                                       f"{message}", endpoint=ENDPOINT)
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            if self._interrupted.is_set():
                return Interrupted(f"{what} abandoned: the uploader is stopping")
            if self._timed_out:
                return EndpointUnavailable(
                    f"{what}: the database did not answer within {self._timeout:g} s "
                    "(uploader.database.statement_timeout_seconds)", endpoint=ENDPOINT)
            return EndpointUnavailable(f"{what}: lost the database connection: {message}",
                                       endpoint=ENDPOINT)
        return TransientError(f"{what}: {type(exc).__name__}: {message}", endpoint=ENDPOINT)


def _stale(conn: psycopg.Connection[Any]) -> bool:
    """An idle autocommit connection has nothing to read unless the server gave up on it."""
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else "unknown error"
