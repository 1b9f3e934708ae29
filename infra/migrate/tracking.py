"""The tracking table `public.schema_migrations`: one row per applied migration.

    version     text PRIMARY KEY          -- "001"
    name        text NOT NULL             -- "create_organizations"
    checksum    text NOT NULL             -- "sha256:<hex>" of the up script as applied (or repaired)
    applied_at  timestamptz NOT NULL DEFAULT now()
    duration_ms integer NOT NULL
    applied_by  text NOT NULL DEFAULT current_user

The table is created on first use (`CREATE TABLE IF NOT EXISTS`, under the migration lock). Reading
never creates it. All functions take an open connection and leave transaction control to the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

SCHEMA = "public"
TABLE = "schema_migrations"


def _table() -> sql.Identifier:
    return sql.Identifier(SCHEMA, TABLE)


@dataclass(frozen=True)
class AppliedMigration:
    version: str
    name: str
    checksum: str
    applied_at: datetime
    duration_ms: int
    applied_by: str


_COLUMNS = sql.SQL(", ").join(
    sql.Identifier(c) for c in ("version", "name", "checksum", "applied_at", "duration_ms", "applied_by")
)


def _record(row: dict[str, Any]) -> AppliedMigration:
    return AppliedMigration(
        version=row["version"],
        name=row["name"],
        checksum=row["checksum"],
        applied_at=row["applied_at"],
        duration_ms=int(row["duration_ms"]),
        applied_by=row["applied_by"],
    )


def table_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (SCHEMA, TABLE),
    ).fetchone()
    return row is not None


def ensure_table(conn: psycopg.Connection[Any]) -> None:
    if table_exists(conn):
        return
    conn.execute(
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {table} (
    version     text PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL,
    applied_by  text NOT NULL DEFAULT current_user
)"""
        ).format(table=_table())
    )
    conn.execute(
        sql.SQL("COMMENT ON TABLE {table} IS {comment}").format(
            table=_table(),
            comment=sql.Literal("Applied SQL migrations (infra.migrate); one row per sql/NNN_name.sql file."),
        )
    )


def fetch_all(conn: psycopg.Connection[Any]) -> dict[str, AppliedMigration]:
    """Every record by version, in version order; {} if the table does not exist."""
    if not table_exists(conn):
        return {}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("SELECT {cols} FROM {table}").format(cols=_COLUMNS, table=_table()))
        records = [_record(r) for r in cur.fetchall()]
    records.sort(key=lambda r: (version_number(r.version), r.version))
    return {r.version: r for r in records}


def version_number(version: str) -> int:
    """The order of a version ("001" -> 1); -1 for a row written by hand with another kind of version."""
    return int(version) if version.isdigit() else -1


def highest_of(records: Iterable[AppliedMigration]) -> AppliedMigration | None:
    """The record with the highest version, or None."""
    return max(records, key=lambda r: version_number(r.version), default=None)


def highest(conn: psycopg.Connection[Any]) -> AppliedMigration | None:
    """The applied migration with the highest version (None if none, or no table)."""
    if not table_exists(conn):
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL(
                "SELECT {cols} FROM {table} WHERE {version} ~ '^[0-9]+$' "
                "ORDER BY {version}::numeric DESC LIMIT 1"
            ).format(cols=_COLUMNS, table=_table(), version=sql.Identifier("version"))
        )
        row = cur.fetchone()
    return _record(row) if row else None


def fetch(conn: psycopg.Connection[Any], version: str) -> AppliedMigration | None:
    if not table_exists(conn):
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL("SELECT {cols} FROM {table} WHERE {version} = %s").format(
                cols=_COLUMNS, table=_table(), version=sql.Identifier("version")
            ),
            (version,),
        )
        row = cur.fetchone()
    return _record(row) if row else None


def insert(
    conn: psycopg.Connection[Any], version: str, name: str, checksum: str, duration_ms: int
) -> AppliedMigration:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL(
                "INSERT INTO {table} ({version}, {name}, {checksum}, {duration_ms}) VALUES (%s, %s, %s, %s) "
                "RETURNING {cols}"
            ).format(
                table=_table(),
                version=sql.Identifier("version"),
                name=sql.Identifier("name"),
                checksum=sql.Identifier("checksum"),
                duration_ms=sql.Identifier("duration_ms"),
                cols=_COLUMNS,
            ),
            (version, name, checksum, duration_ms),
        )
        row = cur.fetchone()
    assert row is not None
    return _record(row)


def delete(conn: psycopg.Connection[Any], version: str) -> bool:
    cur = conn.execute(
        sql.SQL("DELETE FROM {table} WHERE {version} = %s").format(
            table=_table(), version=sql.Identifier("version")
        ),
        (version,),
    )
    return cur.rowcount > 0


def update_checksum(
    conn: psycopg.Connection[Any], version: str, name: str, checksum: str
) -> AppliedMigration | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL(
                "UPDATE {table} SET {name} = %s, {checksum} = %s WHERE {version} = %s RETURNING {cols}"
            ).format(
                table=_table(),
                name=sql.Identifier("name"),
                checksum=sql.Identifier("checksum"),
                version=sql.Identifier("version"),
                cols=_COLUMNS,
            ),
            (name, checksum, version),
        )
        row = cur.fetchone()
    return _record(row) if row else None
