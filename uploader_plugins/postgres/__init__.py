"""The built-in PostgreSQL plugin (psycopg 3): phase 1 and phase 3 of every job.

It is an ordinary plugin, registered through the ``uploader.plugins`` entry point like any
third-party one. One connection serves every job, in autocommit mode so it is never left
"idle in transaction", and without prepared statements so that it works through PgBouncer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from psycopg.types.json import Jsonb

from uploader_core.config import Field, Section, resolve_secret
from uploader_core.errors import ConfigurationError, PermanentJobError, TransientError
from uploader_core.job import CheckResult, Job, RecordState, TransferReceipt
from uploader_core.plugin import hookimpl

from . import schema
from .connection import ENDPOINT, Database

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

SECTION: Section = {
    "host": Field(str, help="database server host name or address"),
    "port": Field(int, 5432, minimum=1, maximum=65535),
    "dbname": Field(str),
    "user": Field(str),
    "password": Field(str, None, "prefer password_env or password_file"),
    "password_env": Field(str, None, "name of an environment variable holding the password"),
    "password_file": Field(str, None, "file holding the password (trailing newlines dropped)"),
    "sslmode": Field(str, "prefer", choices=SSL_MODES),
    "sslrootcert": Field(str, None, "CA certificate(s) to verify the server with"),
    "sslcert": Field(str, None, "client certificate"),
    "sslkey": Field(str, None, "client certificate's key"),
    "sslcrl": Field(str, None, "certificate revocation list"),
    "table": Field(str, "events", "table name, optionally schema-qualified"),
    "connect_timeout_seconds": Field(int, 10, minimum=2),
    "statement_timeout_seconds": Field(float, 30.0, minimum=0.1),
    "application_name": Field(str, "edge-uploader"),
}

_dumps = partial(json.dumps, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class PostgresPlugin:
    """Records each event in the ``events`` table: pending at phase 1, completed at phase 3."""

    def __init__(self) -> None:
        self._db: Database | None = None
        self.table = "events"

    @property
    def db(self) -> Database:
        if self._db is None:
            raise ConfigurationError("the database plugin was used before it was configured")
        return self._db

    @hookimpl
    def uploader_config_sections(self) -> Mapping[str, Section]:
        return {"database": SECTION}

    @hookimpl
    def uploader_configure(self, config: Mapping[str, Any]) -> None:
        s = config["database"]
        if not schema.TABLE_NAME.fullmatch(s["table"]):
            raise ConfigurationError(f"table name {s['table']!r} is not a plain identifier "
                                     "or schema.identifier", setting="uploader.database.table")
        self.table = s["table"]
        params: dict[str, Any] = {
            "host": s["host"], "port": s["port"], "dbname": s["dbname"], "user": s["user"],
            "sslmode": s["sslmode"], "connect_timeout": s["connect_timeout_seconds"],
            "application_name": s["application_name"],
            # A link that drops packets silently is noticed by the kernel, not in hours.
            "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
            "keepalives_count": 3,
            "tcp_user_timeout": int(s["statement_timeout_seconds"] * 1000),
        }
        for key in ("sslrootcert", "sslcert", "sslkey", "sslcrl"):
            if s[key]:
                params[key] = s[key]
        password = resolve_secret(s, "password", "uploader.database")
        if password is not None:
            params["password"] = password
        if self._db is not None and self._db.same_settings(params, self.table,
                                                           s["statement_timeout_seconds"]):
            return  # a reload that changed nothing here keeps the connection
        if self._db is not None:
            self._db.dispose()
        self._db = Database(params, statement_timeout=s["statement_timeout_seconds"],
                            table=self.table)

    @hookimpl
    def store_metadata(self, job: Job) -> RecordState:
        with self.db.cursor(f"recording {job.event_id}") as cur:
            cur.execute(schema.statement(schema.UPSERT, self.table), {
                "event_id": job.event_id,
                "metadata": Jsonb(dict(job.metadata), dumps=_dumps),
                "json_bytes": job.json_size,
                "video_bytes": job.video_size,
                "json_sha256": job.json_sha256,
            })
            row = cur.fetchone()
        if row is None:
            raise TransientError(f"recording {job.event_id} returned no row", endpoint=ENDPOINT)
        status, sha = row
        if status == "completed":
            if sha != job.json_sha256:
                raise PermanentJobError(
                    f"event {job.event_id} was already uploaded and completed with a different "
                    "JSON document; refusing to overwrite it", endpoint=ENDPOINT)
            return RecordState.COMPLETED
        return RecordState.PENDING

    @hookimpl
    def mark_completed(self, job: Job, receipts: Sequence[TransferReceipt]) -> None:
        primary = receipts[0]
        with self.db.cursor(f"completing {job.event_id}") as cur:
            cur.execute(schema.statement(schema.MARK_COMPLETED, self.table), {
                "event_id": job.event_id,
                "remote_video_path": primary.remote_video_path,
                "remote_json_path": primary.remote_json_path,
                "video_sha256": primary.video_sha256,
            })
            if cur.rowcount != 1:
                raise TransientError(f"the record of {job.event_id} disappeared before it was "
                                     "completed; it will be recorded again", endpoint=ENDPOINT)

    @hookimpl
    def confirm_completed(self, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        with self.db.cursor("confirming completed events") as cur:
            cur.execute(schema.statement(schema.CONFIRM_COMPLETED, self.table), (list(event_ids),))
            return {row[0] for row in cur.fetchall()}

    @hookimpl
    def uploader_init_storage(self) -> None:
        with self.db.cursor("creating the events table") as cur, cur.connection.transaction():
            # Two devices running init-db at once must not race on the catalog.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            cur.execute(schema.statement(schema.CREATE_TABLE, self.table))
            cur.execute(schema.statement(schema.CREATE_PENDING_INDEX, self.table))

    @hookimpl
    def uploader_check(self) -> Sequence[CheckResult]:
        results = []
        try:
            with self.db.cursor("checking the database") as cur:
                cur.execute("SELECT version()")
                results.append(CheckResult(name="database: connect", ok=True,
                                           detail="connected and authenticated"))
                schema_name, _, name = self.table.rpartition(".")
                cur.execute(schema.COLUMNS, {"schema": schema_name or None, "name": name})
                columns = {r[0] for r in cur.fetchall()}
                if not columns:
                    results.append(CheckResult(
                        name=f"database: table {self.table}", ok=False,
                        detail="missing; run 'uploader init-db -c CONFIG'"))
                    return results
                missing = schema.REQUIRED_COLUMNS - columns
                results.append(CheckResult(
                    name=f"database: table {self.table}", ok=not missing,
                    detail="present" if not missing else f"lacks columns {sorted(missing)}"))
                # One privilege at a time: with a list, has_table_privilege is true for any.
                cur.execute("SELECT has_table_privilege(%(t)s, 'SELECT') AND "
                            "has_table_privilege(%(t)s, 'INSERT') AND "
                            "has_table_privilege(%(t)s, 'UPDATE')", {"t": self.table})
                row = cur.fetchone()
                allowed = bool(row and row[0])
                results.append(CheckResult(
                    name=f"database: privileges on {self.table}", ok=allowed,
                    detail="SELECT, INSERT, UPDATE granted" if allowed
                    else "the user lacks SELECT, INSERT or UPDATE"))
        except Exception as exc:
            name = "database: connect" if not results else "database: query"
            results.append(CheckResult(name=name, ok=False, detail=str(exc)))
        return results

    @hookimpl
    def uploader_interrupt(self) -> None:
        if self._db is not None:
            self._db.interrupt()

    @hookimpl
    def uploader_shutdown(self) -> None:
        if self._db is not None:
            self._db.dispose()
