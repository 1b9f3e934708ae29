"""The migration lock: a session-level PostgreSQL advisory lock on a 64-bit key derived from a name.

    key = lock_key(name) = first 8 bytes of sha256(name), big-endian, signed

Migrators given the same lock name (`Migrator(lock_name=...)`, default `DEFAULT_LOCK_NAME`) exclude
each other; advisory locks are per database, so migrators of different databases never do.
In `pg_locks` it shows as locktype 'advisory', classid = key >> 32, objid = key & 0xFFFFFFFF
(both unsigned), objsubid 1. To see who holds it:

    SELECT a.pid, a.application_name, a.usename, a.state, a.backend_start
    FROM pg_locks l JOIN pg_stat_activity a USING (pid)
    WHERE l.locktype = 'advisory' AND l.granted AND l.classid = <classid> AND l.objid = <objid>
      AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());

It is taken with `pg_try_advisory_lock` in a loop (sleeping with backoff until the timeout) rather than
a blocking `pg_advisory_lock`: a waiting session then holds no snapshot, so it cannot block the holder's
`CREATE INDEX CONCURRENTLY` (which waits for every transaction with an older snapshot). It is released
with `pg_advisory_unlock` when the work is done, and in any case when the session ends.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from .errors import LockTimeoutError

DEFAULT_LOCK_NAME = "schema_migrations"

_INITIAL_SLEEP = 0.05
_MAX_SLEEP = 1.0


def lock_key(name: str) -> int:
    """The advisory lock key of the lock name `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def lock_holders(conn: psycopg.Connection[Any], key: int) -> list[dict[str, Any]]:
    """The sessions holding the advisory lock `key` in the current database (normally zero or one)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT a.pid, a.application_name, a.usename, a.client_addr::text AS client_addr, a.state, "
            "a.backend_start, a.state_change "
            "FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::oid AND l.objid = %s::oid "
            "AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
        )
        return list(cur.fetchall())


def describe_holders(holders: list[dict[str, Any]]) -> str:
    if not holders:
        return "no session (it was released just now)"
    parts = []
    for h in holders:
        since = h.get("state_change") or h.get("backend_start")
        parts.append(
            f"pid {h['pid']} (application_name {h.get('application_name') or ''!r}, "
            f"usename {h.get('usename')!r}, client {h.get('client_addr') or 'local'}, "
            f"state {h.get('state')!r}{f', since {since:%Y-%m-%d %H:%M:%S%z}' if since else ''})"
        )
    return "; ".join(parts)


def try_lock(conn: psycopg.Connection[Any], key: int) -> bool:
    row = conn.execute("SELECT pg_catalog.pg_try_advisory_lock(%s)", (key,)).fetchone()
    return bool(row and row[0])


def unlock(conn: psycopg.Connection[Any], key: int) -> None:
    conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", (key,))


@contextmanager
def migration_lock(
    conn: psycopg.Connection[Any],
    timeout: float,
    log: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    *,
    name: str = DEFAULT_LOCK_NAME,
) -> Iterator[None]:
    """Hold the migration lock `name` on `conn` (an autocommit connection) for the duration of the block.

    Raises LockTimeoutError, naming the holder, if the lock is not free within `timeout` seconds."""
    started = time.monotonic()
    deadline = started + max(timeout, 0.0)
    delay = _INITIAL_SLEEP
    announced = False
    key = lock_key(name)
    while not try_lock(conn, key):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            holders = lock_holders(conn, key)
            waited = time.monotonic() - started
            raise LockTimeoutError(
                f"could not get the migration lock (advisory lock {key}, '{name}') within "
                f"{timeout:g} s: it is held by {describe_holders(holders)}. Another migration run is "
                "probably in progress (its application_name says which tool): wait for it and "
                "retry. If that session is stuck, end it with SELECT pg_terminate_backend(<pid>).",
                holders=holders,
                waited=waited,
            )
        if not announced and log is not None:
            log(f"waiting for the migration lock, held by {describe_holders(lock_holders(conn, key))}")
            announced = True
        sleep(min(delay, remaining))
        delay = min(delay * 2, _MAX_SLEEP)
    try:
        yield
    finally:
        if not conn.closed:
            try:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
                unlock(conn, key)
            except psycopg.Error:
                conn.close()  # the session's end releases the lock
