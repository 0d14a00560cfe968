"""The ``events`` table and the statements the plugin runs against it.

Every statement is parameterized; the table name is the only piece of SQL built at run time,
and it goes through :class:`psycopg.sql.Identifier`.
"""

from __future__ import annotations

import functools
import re

from psycopg import sql

TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?")

# Sizes and checksums let an operator verify a remote copy without the device; attempts show
# a job that keeps failing.
CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    event_id          TEXT PRIMARY KEY,
    status            TEXT NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'completed')),
    metadata          JSONB NOT NULL,
    remote_video_path TEXT,
    remote_json_path  TEXT,
    json_bytes        BIGINT,
    video_bytes       BIGINT,
    json_sha256       TEXT,
    video_sha256      TEXT,
    attempts          INTEGER NOT NULL DEFAULT 1,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at      TIMESTAMPTZ
)
"""

# Operators look for what is still pending; a partial index stays small as completed rows grow.
CREATE_PENDING_INDEX = """
CREATE INDEX IF NOT EXISTS {index} ON {table} (updated_at) WHERE status = 'pending'
"""

# Phase 1. A retry, even after the row was completed, never adds a row. A completed row keeps
# its metadata: what was uploaded is what it describes.
UPSERT = """
INSERT INTO {table} AS e
    (event_id, status, metadata, json_bytes, video_bytes, json_sha256)
VALUES (%(event_id)s, 'pending', %(metadata)s, %(json_bytes)s, %(video_bytes)s, %(json_sha256)s)
ON CONFLICT (event_id) DO UPDATE SET
    attempts    = e.attempts + 1,
    updated_at  = now(),
    metadata    = CASE WHEN e.status = 'pending' THEN EXCLUDED.metadata ELSE e.metadata END,
    json_bytes  = CASE WHEN e.status = 'pending' THEN EXCLUDED.json_bytes ELSE e.json_bytes END,
    video_bytes = CASE WHEN e.status = 'pending' THEN EXCLUDED.video_bytes ELSE e.video_bytes END,
    json_sha256 = CASE WHEN e.status = 'pending' THEN EXCLUDED.json_sha256
                       ELSE e.json_sha256 END
RETURNING status, json_sha256
"""

# Phase 3. Idempotent: completing twice keeps the first completion time.
MARK_COMPLETED = """
UPDATE {table} SET
    status            = 'completed',
    remote_video_path = %(remote_video_path)s,
    remote_json_path  = %(remote_json_path)s,
    video_sha256      = %(video_sha256)s,
    updated_at        = now(),
    completed_at      = COALESCE(completed_at, now())
WHERE event_id = %(event_id)s
"""

# Archive retention deletes a local copy only when the table says the event is completed.
CONFIRM_COMPLETED = """
SELECT event_id FROM {table} WHERE status = 'completed' AND event_id = ANY(%s)
"""

REQUIRED_COLUMNS = frozenset({
    "event_id", "status", "metadata", "remote_video_path", "remote_json_path", "json_bytes",
    "video_bytes", "json_sha256", "video_sha256", "attempts", "created_at", "updated_at",
    "completed_at",
})

COLUMNS = """
SELECT column_name FROM information_schema.columns
WHERE table_schema = COALESCE(%(schema)s, current_schema()) AND table_name = %(name)s
"""


def table_identifier(name: str) -> sql.Identifier:
    return sql.Identifier(*name.split("."))


@functools.lru_cache(maxsize=32)
def statement(template: str, table: str) -> str:
    """``template`` for ``table``, quoted as identifiers; rendered once, not at every job."""
    bare = table.split(".")[-1]
    return sql.SQL(template).format(
        table=table_identifier(table), index=sql.Identifier(f"{bare}_pending_idx")
    ).as_string(None)
