"""Who blocks a migration's statement: `pg_blocking_pids`, sampled while the statement waits.

Once a statement has failed with lock_not_available its session waits for nothing, so the blockers
must be read while it still waits: `BlockerWatch` samples them from a second connection, opened only
when a statement has been running for a moment (most never wait, and open none). What is read about a
blocker is its pid, user, application_name, state and how long its transaction and its state have
lasted: never its query text, which may carry values. A non-superuser sees the state and the ages of
its own role's sessions only (or of every session with `pg_read_all_stats`); for others they are
reported as not visible.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from .errors import MigrationsError

_BLOCKERS = (
    "SELECT a.pid, a.usename, a.application_name, a.state, a.backend_type, "
    "EXTRACT(EPOCH FROM now() - a.xact_start)::float8 AS xact_age, "
    "EXTRACT(EPOCH FROM now() - a.state_change)::float8 AS state_age "
    "FROM unnest(pg_catalog.pg_blocking_pids(%s)) AS b(pid) "
    "LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = b.pid ORDER BY b.pid"
)


@dataclass(frozen=True)
class Blocker:
    pid: int
    usename: str | None = None
    application_name: str | None = None
    state: str | None = None  # None: not visible to the migrating role
    xact_age_s: float | None = None  # how long its transaction has been open
    state_age_s: float | None = None  # how long it has been in `state`
    backend_type: str | None = None

    def describe(self) -> str:
        parts = [f"application_name {self.application_name or ''!r}", f"user {self.usename or '?'!r}"]
        if self.state is None:
            parts.append("state and age not visible to the migrating role (it needs pg_read_all_stats)")
        else:
            parts.append(f"state {self.state!r}")
            if self.xact_age_s is not None:
                parts.append(f"transaction open for {_duration(self.xact_age_s)}")
            elif self.state_age_s is not None:
                parts.append(f"{self.state} for {_duration(self.state_age_s)}")
        if self.backend_type and self.backend_type != "client backend":
            parts.append(self.backend_type)
        return f"pid {self.pid} ({', '.join(parts)})"


def describe_blockers(blockers: Sequence[Blocker]) -> str:
    if not blockers:
        return "a session that was not seen (it ended, or the wait was too short to sample)"
    return "; ".join(b.describe() for b in blockers)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def blockers_of(conn: psycopg.Connection[Any], pid: int) -> list[Blocker]:
    """The sessions that `pid`'s current lock wait waits for (empty when it waits for none)."""
    rows = conn.execute(_BLOCKERS, (pid,)).fetchall()
    return [
        Blocker(pid=r[0] if r[0] is not None else 0, usename=r[1], application_name=r[2], state=r[3],
                backend_type=r[4], xact_age_s=r[5], state_age_s=r[6])
        for r in rows
    ]


class BlockerWatch:
    """Samples, from its own connection, who blocks the session `pid` while `watching()` blocks run.

    `connect` opens an autocommit connection; it is called in the watch's thread, at most once, and
    only when a statement has run for `after` seconds. A failure to connect or to read is kept quiet:
    the watch only adds detail to an error the runner raises anyway.
    """

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], pid: int, *, after: float = 0.1,
                 interval: float = 0.1) -> None:
        self._connect = connect
        self._pid = pid
        self._after = after
        self._interval = interval
        self._running = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._seen: list[Blocker] = []
        self.last: list[Blocker] = []  # what the last statement's samples found, see end_statement
        self._conn: psycopg.Connection[Any] | None = None
        self._broken = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> BlockerWatch:
        self._thread = threading.Thread(target=self._loop, name="migration-blocker-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._running.set()
        if self._thread is not None:
            self._thread.join(5)

    def start_statement(self) -> None:
        with self._lock:
            self._seen = []
        self._running.set()

    def end_statement(self) -> list[Blocker]:
        """Stops sampling; the blockers of the statement's last sample that found any."""
        self._running.clear()
        with self._lock:
            self.last = list(self._seen)
        return self.last

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._running.wait()
                if self._stop.wait(self._after) or not self._running.is_set():
                    continue
                while self._running.is_set() and not self._stop.is_set():
                    found = self._sample()
                    if found:
                        with self._lock:
                            self._seen = found
                    self._stop.wait(self._interval)
        finally:
            if self._conn is not None:
                self._conn.close()

    def _sample(self) -> list[Blocker]:
        if self._broken:
            return []
        try:
            if self._conn is None:
                self._conn = self._connect()
                self._conn.execute("SET statement_timeout = 2000")
                self._conn.execute("SET lock_timeout = 1000")
            return blockers_of(self._conn, self._pid)
        except (psycopg.Error, OSError, MigrationsError):
            self._broken = True
            return []
