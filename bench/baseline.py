"""The baseline: the upload specification read literally, with nothing the uploader adds.

For every job, in order: open a new SSH connection and SFTP session (paramiko ``SSHClient``
with its defaults) and a new PostgreSQL connection (psycopg), ``INSERT`` the record, put the
video, put the JSON, ``UPDATE`` the record to completed, close both connections and move the
two files into the archive. No temporary names, no size checks, no hashing, no reuse.
This is what a straightforward first implementation costs per event; row 2 says how many
times faster the uploader is.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from pathlib import Path
from typing import Any

import paramiko
import psycopg
from psycopg.types.json import Jsonb
from servers import PostgresEndpoint, SftpDirs

TABLE = """
CREATE TABLE IF NOT EXISTS baseline_events (
    event_id          TEXT PRIMARY KEY,
    status            TEXT NOT NULL,
    metadata          JSONB NOT NULL,
    remote_video_path TEXT,
    remote_json_path  TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at      TIMESTAMPTZ
)
"""


def create_table(pg: PostgresEndpoint) -> None:
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        conn.execute(TABLE)


def upload_one(event_id: str, pending: Path, uploaded: Path, pg: PostgresEndpoint,
               sftp: SftpDirs) -> None:
    endpoint = sftp.endpoint
    video = pending / f"{event_id}.mp4"
    document = pending / f"{event_id}.json"
    metadata: Any = json.loads(document.read_bytes())

    ssh = paramiko.SSHClient()
    ssh.load_host_keys(str(endpoint.known_hosts_path))
    ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
    ssh.connect(endpoint.host, port=endpoint.port, username=endpoint.username,
                key_filename=str(endpoint.key_path), look_for_keys=False, allow_agent=False,
                timeout=30)
    try:
        client = ssh.open_sftp()
        with psycopg.connect(pg.conninfo()) as conn:
            conn.execute("INSERT INTO baseline_events (event_id, status, metadata) "
                         "VALUES (%s, 'pending', %s)", (event_id, Jsonb(metadata)))
            conn.commit()
            remote_video = posixpath.join(sftp.remote_video_dir, video.name)
            remote_json = posixpath.join(sftp.remote_json_dir, document.name)
            client.put(str(video), remote_video)
            client.put(str(document), remote_json)
            conn.execute("UPDATE baseline_events SET status = 'completed', "
                         "remote_video_path = %s, remote_json_path = %s, completed_at = now() "
                         "WHERE event_id = %s", (remote_video, remote_json, event_id))
            conn.commit()
        client.close()
    finally:
        ssh.close()
    os.replace(video, uploaded / video.name)
    os.replace(document, uploaded / document.name)


def run(ids: list[str], pending: Path, uploaded: Path, pg: PostgresEndpoint,
        sftp: SftpDirs) -> float:
    """Upload ``ids`` one job at a time; the wall time in seconds."""
    uploaded.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for event_id in ids:
        upload_one(event_id, pending, uploaded, pg, sftp)
    return time.perf_counter() - started
