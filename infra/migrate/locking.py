"""The migration lock: a session-level PostgreSQL advisory lock on one fixed 64-bit key.

    LOCK_NAME = "customer-insights:schema_migrations"
    LOCK_KEY  = first 8 bytes of sha256(LOCK_NAME), big-endian, signed
              = -4344450105921422089   (0xc3b569a584253cf7)

In `pg_locks` it shows as locktype 'advisory', classid 3283446181, objid 2217032951, objsubid 1
(advisory locks are per database: migrators of different databases do not exclude each other).
To see who holds it:

    SELECT a.pid, a.application_name, a.usename, a.state, a.backend_start
    FROM pg_locks l JOIN pg_stat_activity a USING (pid)
    WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 3283446181 AND l.objid = 2217032951
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

LOCK_NAME = "customer-insights:schema_migrations"
LOCK_KEY = int.from_bytes(hashlib.sha256(LOCK_NAME.encode()).digest()[:8], "big", signed=True)
_CLASSID = (LOCK_KEY >> 32) & 0xFFFFFFFF
_OBJID = LOCK_KEY & 0xFFFFFFFF

_INITIAL_SLEEP = 0.05
_MAX_SLEEP = 1.0


def lock_holders(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The sessions holding the migration lock in the current database (normally zero or one)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT a.pid, a.application_name, a.usename, a.client_addr::text AS client_addr, a.state, "
            "a.backend_start, a.state_change "
            "FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::oid AND l.objid = %s::oid "
            "AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
            (_CLASSID, _OBJID),
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


def try_lock(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_catalog.pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
    return bool(row and row[0])


def unlock(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", (LOCK_KEY,))


@contextmanager
def migration_lock(
    conn: psycopg.Connection[Any],
    timeout: float,
    log: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """Hold the migration lock on `conn` (an autocommit connection) for the duration of the block.

    Raises LockTimeoutError, naming the holder, if the lock is not free within `timeout` seconds."""
    started = time.monotonic()
    deadline = started + max(timeout, 0.0)
    delay = _INITIAL_SLEEP
    announced = False
    while not try_lock(conn):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            holders = lock_holders(conn)
            waited = time.monotonic() - started
            raise LockTimeoutError(
                f"could not get the migration lock (advisory lock {LOCK_KEY}, '{LOCK_NAME}') within "
                f"{timeout:g} s: it is held by {describe_holders(holders)}. Another migration run is "
                "probably in progress (its application_name says which tool): wait for it and "
                "retry. If that session is stuck, end it with SELECT pg_terminate_backend(<pid>).",
                holders=holders,
                waited=waited,
            )
        if not announced and log is not None:
            log(f"waiting for the migration lock, held by {describe_holders(lock_holders(conn))}")
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
                unlock(conn)
            except psycopg.Error:
                conn.close()  # the session's end releases the lock
