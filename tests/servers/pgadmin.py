"""Housekeeping shared by the PostgreSQL providers: the test role and per-test databases."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import psycopg
from psycopg import sql

from .endpoints import PostgresEndpoint

TEST_ROLE = "uploader"
# Random per session: a test can search logs and error messages for it to prove it never leaks.
TEST_PASSWORD = f"pw-{secrets.token_hex(10)}"
DEFAULT_DB = "uploader"
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a plain lower-case identifier: {name!r}")
    return name


def setup_role_and_default_db(admin_conninfo: str) -> None:
    """Create the (non-superuser) test role and its default database; safe to repeat."""
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [TEST_ROLE])
        if role.fetchone() is None:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(TEST_ROLE), sql.Literal(TEST_PASSWORD)
                )
            )
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DEFAULT_DB])
        if exists.fetchone() is None:
            create_database(admin_conninfo, DEFAULT_DB)


def create_database(admin_conninfo: str, name: str) -> None:
    """A new empty database owned by the test role, so the uploader can create its tables."""
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        statement = sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
            sql.Identifier(_check_name(name)), sql.Identifier(TEST_ROLE)
        )
        if conn.info.server_version >= 150000:
            # Copying files is ~5x faster than PostgreSQL 15's default of WAL-logging every
            # block, and durability does not matter here (about 35 ms per test instead of 170).
            statement += sql.SQL(" STRATEGY FILE_COPY")
        conn.execute(statement)


def drop_database(admin_conninfo: str, name: str) -> None:
    """Drop ``name``; FORCE disconnects engines a test left connected."""
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(_check_name(name))
            )
        )


def endpoint_for(
    host: str, port: int, dbname: str, sslrootcert: Path | None = None
) -> PostgresEndpoint:
    return PostgresEndpoint(host, port, dbname, TEST_ROLE, TEST_PASSWORD, sslrootcert)
