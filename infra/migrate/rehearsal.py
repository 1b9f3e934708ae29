"""Rehearsal: run pending migrations on a scratch copy of the target's schema and say what they will do.

    with scratch_database(server, schema_from=target, owner=owner, log=log) as db:
        result = rehearse(pending, scratch=db, run_as=owner, target=target, limits=StatementLimits())
    for line in result.lines(): print(line)

Each file runs as `up` runs it: a session of the owner role (`SET SESSION AUTHORIZATION`, so
current_user and session_user are that role), the session limits, one transaction for the file or,
for a `-- migrate:no-transaction` file, one per statement. After each statement the tracer reads, in
that statement's own transaction, the locks its backend holds (pg_locks), the relfilenodes, columns,
constraints and indexes of the relations that existed before the file, and its effective timeouts;
the difference with the state before the statement is what the statement did. A statement that
cannot run in a transaction block (CREATE INDEX CONCURRENTLY, ...) runs in autocommit while a second
session holds a snapshot open (so it waits as it would on a busy server) and a third polls its locks.

What the scratch catalog shows is then checked on the target's data, read-only (see `_TargetReader`):
counts only, never values. See docs/rehearsal.md.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, LiteralString, cast

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import sql

from .errors import MigrationFailedError, MigrationFileError, MigrationsError, excerpt
from .files import NO_TRANSACTION_MARKER, MigrationFile, validate_script
from .scratch import _scrub
from .session import CONNECT_TIMEOUT, StatementLimits, session_setup
from .statements import Statement, transaction_control

Log = Callable[[str], None]

APPLICATION_NAME = "migration-rehearsal"
READ_LOCK_TIMEOUT_MS = 1000  # a read of the target never queues long behind a lock
COUNT_UNANALYSED_MAX_BYTES = 64 * 1024 * 1024  # a never-analysed table this small is counted exactly
SNAPSHOT_RELEASE_AFTER_S = 30.0  # an autocommit statement that never waits still gets its snapshot released
CALIBRATION_ROWS = 100_000

LOCK_MODES = {
    "AccessShareLock": "ACCESS SHARE",
    "RowShareLock": "ROW SHARE",
    "RowExclusiveLock": "ROW EXCLUSIVE",
    "ShareUpdateExclusiveLock": "SHARE UPDATE EXCLUSIVE",
    "ShareLock": "SHARE",
    "ShareRowExclusiveLock": "SHARE ROW EXCLUSIVE",
    "ExclusiveLock": "EXCLUSIVE",
    "AccessExclusiveLock": "ACCESS EXCLUSIVE",
}
_STRENGTH = {mode: i for i, mode in enumerate(LOCK_MODES.values())}
# Modes that stop writes (or reads, for ACCESS EXCLUSIVE) of the table while held.
BLOCKING_MODES = frozenset({"SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"})
RELKINDS = {
    "r": "table", "p": "partitioned table", "i": "index", "I": "partitioned index", "S": "sequence",
    "v": "view", "m": "materialized view", "f": "foreign table", "c": "composite type", "t": "TOAST table",
}
_TABLE_KINDS = frozenset({"table", "partitioned table", "materialized view"})


NOT_IN_TRANSACTION_HINT = (
    f"this statement cannot run inside a transaction: put `{NO_TRANSACTION_MARKER}` in the file's "
    "header (its leading comment lines) so its statements run one by one, in autocommit"
)


class RehearsalError(MigrationsError):
    """The rehearsal itself could not run (not a migration's failure: that is reported in the result)."""


def _noop(_: str) -> None:
    pass


# ============================================================================================ results


@dataclass(frozen=True)
class LockTaken:
    mode: str  # "ACCESS EXCLUSIVE", ...
    relation: str  # schema.name
    kind: str  # "table", "index", ...
    on_target: bool  # the relation exists on the target (not created by an earlier pending file)
    held_since: int | None = None  # taken by the statement at this line of the same transaction, still held


@dataclass(frozen=True)
class Rewrite:
    relation: str
    kind: str
    on_target: bool
    truncate: bool = False  # TRUNCATE: new empty files, not a copy of the rows


@dataclass(frozen=True)
class ValidationScan:
    relation: str  # the table read in full
    reason: str  # "SET NOT NULL on notes", "CHECK constraint x validated", "index x built"
    on_target: bool
    kind: str = "scan"  # "scan" (read the table) or "index" (read and sort it into an index)


@dataclass(frozen=True)
class RelationSize:
    relation: str
    kind: str
    heap_bytes: int | None
    total_bytes: int | None  # heap, TOAST and indexes
    rows: int | None
    rows_source: str  # "estimate" (reltuples), "count" (count(*) of a never-analysed table), "unknown"
    note: str | None = None  # why a figure is missing


@dataclass(frozen=True)
class DataCheck:
    check: str  # "rows" | "not_null" | "unique" | "check" | "foreign_key" | "exclusion"
    relation: str
    subject: str  # the column, constraint or index
    status: str  # "passed" | "failed" | "unknown"
    count: int | None = None  # rows (or duplicate groups) that make the statement fail
    reason: str | None = None  # for "unknown": why

    def describe(self) -> str:
        what = {
            "rows": f"rows in {self.relation} (new NOT NULL column {self.subject} without a default)",
            "not_null": f"rows of {self.relation} with {self.subject} NULL",
            "unique": f"groups of duplicate keys of {self.subject} in {self.relation}",
            "check": f"rows of {self.relation} violating {self.subject}",
            "foreign_key": f"rows of {self.relation} without a referenced row ({self.subject})",
            "exclusion": f"conflicting rows of {self.relation} ({self.subject})",
        }[self.check]
        if self.status == "failed":
            if self.reason:
                return f"FAILS: ~{self.count or 0:,} {what} ({self.reason})"
            return f"FAILS: {self.count:,} {what}"
        if self.status == "passed":
            return f"passed: 0 {what}"
        return f"unknown ({what}): {self.reason}"


@dataclass(frozen=True)
class StatementFailure:
    """What `up` would report (MigrationFailedError's facts)."""

    filename: str
    line: int | None
    statement: str
    sqlstate: str | None
    message: str
    detail: str | None = None
    hint: str | None = None

    def describe(self) -> str:
        where = f"{self.filename}, line {self.line}" if self.line else self.filename
        state = f" (SQLSTATE {self.sqlstate})" if self.sqlstate else ""
        return f"{where}: {self.message}{state}"

    def to_error(self) -> MigrationsError:
        """The error `up` would raise, worded as up words it (a MigrationFailedError, or for a file
        the runner refuses before running it, a MigrationFileError)."""
        if self.line is None:
            return MigrationFileError(self.message)
        return MigrationFailedError(
            self.filename, self.statement, self.line, self.message, self.sqlstate,
            pg_detail=self.detail, pg_hint=self.hint,
        )


@dataclass(frozen=True)
class StatementTrace:
    line: int
    summary: str  # the statement on one line, cut short
    locks: tuple[LockTaken, ...] = ()  # newly taken, on relations that existed before the file
    rewrites: tuple[Rewrite, ...] = ()
    scans: tuple[ValidationScan, ...] = ()
    lock_timeout: str | None = None  # current_setting after the statement
    statement_timeout: str | None = None
    error: StatementFailure | None = None
    sizes: tuple[RelationSize, ...] = ()  # on the target, of the relations locked, rewritten or scanned
    checks: tuple[DataCheck, ...] = ()
    scratch_ms: float = 0.0  # how long it ran on the scratch database
    estimate_ms: float | None = None  # at the target's size; None when unknown
    estimate_basis: str = ""
    autocommit: bool = False  # ran outside a transaction block (CREATE INDEX CONCURRENTLY, ...)
    created: tuple[str, ...] = ()  # tables, indexes, ... the statement created (schema.name)

    @property
    def failing(self) -> bool:
        return self.error is not None or any(c.status == "failed" for c in self.checks)

    @property
    def blocking(self) -> bool:
        """Holds a lock that stops writes to (or reads of) an existing table, or rewrites one."""
        held: dict[str, int] = {}  # relation -> the strongest lock held before this statement
        for lock in self.locks:
            if lock.held_since is not None:
                held[lock.relation] = max(held.get(lock.relation, -1), _STRENGTH[lock.mode])
        return any(
            lock.on_target and lock.mode in BLOCKING_MODES and lock.kind in _TABLE_KINDS and lock.held_since is None
            and _STRENGTH[lock.mode] > held.get(lock.relation, -1)
            for lock in self.locks
        ) or any(r.on_target for r in self.rewrites)

    @property
    def unknown_checks(self) -> int:
        return sum(1 for c in self.checks if c.status == "unknown")

    def human(self) -> str:
        head = f"line {self.line}: {self.summary}"
        if self.error is not None:
            return f"{head}: FAILS: {self.error.message}" + (
                f" (SQLSTATE {self.error.sqlstate})" if self.error.sqlstate else ""
            )
        parts = [self._locks_text(), self._rewrite_text()]
        if self.scans:
            parts.append("scans " + ", ".join(f"{s.relation} ({s.reason})" for s in self.scans))
        parts.append(self._estimate_text())
        parts.append("check: " + ("; ".join(c.describe() for c in self.checks) if self.checks else "none"))
        parts.append(f"lock_timeout {self.lock_timeout}, statement_timeout {self.statement_timeout}")
        return f"{head}: " + "; ".join(parts)

    def _size_text(self, relation: str) -> str:
        size = next((s for s in self.sizes if s.relation == relation), None)
        if size is None:
            return ""
        if size.heap_bytes is None:
            return f" ({size.note or 'size unknown'})"
        rows = "rows unknown" if size.rows is None else f"{size.rows:,} rows"
        if size.rows_source == "estimate" and size.rows is not None:
            rows = f"~{rows}"
        if size.note:
            rows = f"{rows}, {size.note}"
        return f" ({rows}, {_bytes(size.total_bytes or size.heap_bytes)})"

    def _locks_text(self) -> str:
        strongest: dict[str, LockTaken] = {}
        indexes: dict[str, int] = {}
        for lock in self.locks:
            if lock.kind in ("index", "partitioned index"):
                indexes[lock.mode] = indexes.get(lock.mode, 0) + 1
                continue
            held = strongest.get(lock.relation)
            if held is None or _STRENGTH[lock.mode] > _STRENGTH[held.mode]:
                strongest[lock.relation] = lock
        if not strongest and not indexes:
            return "no lock on an existing object"
        texts = []
        for lock in sorted(strongest.values(), key=lambda lk: (-_STRENGTH[lk.mode], lk.relation)):
            where = self._size_text(lock.relation) if lock.on_target else " (new: created by a pending file)"
            since = f" (held since line {lock.held_since})" if lock.held_since is not None else ""
            texts.append(f"{lock.mode} on {lock.relation}{where}{since}")
        for mode, n in sorted(indexes.items(), key=lambda kv: -_STRENGTH[kv[0]]):
            texts.append(f"{mode} on {n} index{'es' if n > 1 else ''}")
        return ", ".join(texts)

    def _rewrite_text(self) -> str:
        if not self.rewrites:
            return "no rewrite"
        truncated = [r.relation for r in self.rewrites if r.truncate and r.kind in _TABLE_KINDS]
        tables = [r.relation for r in self.rewrites if not r.truncate and r.kind in _TABLE_KINDS]
        indexes = [r.relation for r in self.rewrites if r.kind not in _TABLE_KINDS]
        texts = []
        if truncated:
            texts.append("TRUNCATE of " + ", ".join(truncated))
        if tables:
            texts.append("REWRITES " + ", ".join(tables))
        if indexes:
            texts.append(f"rebuilds {len(indexes)} index{'es' if len(indexes) > 1 else ''}")
        return "; ".join(texts)

    def _estimate_text(self) -> str:
        if self.estimate_ms is None:
            return f"duration unknown ({self.estimate_basis})" if self.estimate_basis else "duration unknown"
        return f"about {duration_text(self.estimate_ms)}" + (f" ({self.estimate_basis})" if self.estimate_basis else "")


@dataclass(frozen=True)
class MigrationTrace:
    filename: str
    version: str
    transactional: bool
    rehearsed: bool
    statements: tuple[StatementTrace, ...] = ()
    error: StatementFailure | None = None  # the first failing statement's (or the file's) error
    reason: str | None = None  # why it was not rehearsed

    @property
    def failing(self) -> bool:
        return self.error is not None or any(st.failing for st in self.statements)

    @property
    def status(self) -> str:
        if not self.rehearsed:
            return "not rehearsed"
        return "fails" if self.failing else "passes"

    def lines(self) -> list[str]:
        mode = "one transaction" if self.transactional else "no transaction: statement by statement"
        if not self.rehearsed:
            return [f"{self.filename}: not rehearsed: {self.reason}"]
        head = f"{self.filename} ({mode}): {self.status}"
        if self.error is not None and not self.statements:
            head += f": {self.error.describe()}"
        blocking = sum(1 for st in self.statements if st.blocking)
        if blocking:
            head += f", {blocking} blocking statement{'s' if blocking > 1 else ''}"
        return [head, *(f"  {st.human()}" for st in self.statements)]


@dataclass(frozen=True)
class Calibration:
    """Rates measured on the scratch server (not the target's hardware)."""

    bytes: int  # size of the synthetic table
    rewrite_mb_s: float  # ALTER COLUMN TYPE with a rewrite, heap + index
    scan_mb_s: float  # a full sequential scan
    index_mb_s: float  # CREATE INDEX (a btree on an integer)
    server: str

    def describe(self) -> str:
        return (
            f"rates measured on the scratch server ({self.server}) with a {_bytes(self.bytes)} table: "
            f"rewrite {self.rewrite_mb_s:.0f} MB/s, scan {self.scan_mb_s:.0f} MB/s, "
            f"index build {self.index_mb_s:.0f} MB/s"
        )


@dataclass(frozen=True)
class Rehearsal:
    migrations: tuple[MigrationTrace, ...]
    calibration: Calibration | None
    target_read: bool  # the target's sizes and data were read (False: first preview, or unreachable)
    target_note: str | None = None  # why the target was not read
    statements: tuple[StatementTrace, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "statements", tuple(st for m in self.migrations for st in m.statements))

    @property
    def failing_files(self) -> int:
        return sum(1 for m in self.migrations if m.failing)

    @property
    def failing_statements(self) -> int:
        return sum(1 for st in self.statements if st.failing) + sum(
            1 for m in self.migrations if m.error is not None and not any(st.error for st in m.statements)
        )

    @property
    def blocking_statements(self) -> int:
        return sum(1 for st in self.statements if st.blocking)

    @property
    def unknown_checks(self) -> int:
        return sum(st.unknown_checks for st in self.statements)

    @property
    def not_rehearsed(self) -> int:
        return sum(1 for m in self.migrations if not m.rehearsed)

    @property
    def ok(self) -> bool:
        return self.failing_files == 0

    def verdict(self) -> str:
        files = len(self.migrations)
        text = (
            f"rehearsal of {files} pending migration{'s' if files != 1 else ''}: "
            f"{self.failing_files} failing file(s), {self.failing_statements} failing statement(s), "
            f"{self.blocking_statements} blocking statement(s), {self.unknown_checks} unknown check(s)"
        )
        if self.not_rehearsed:
            text += f", {self.not_rehearsed} not rehearsed"
        return text

    def lines(self) -> list[str]:
        out = [self.verdict()]
        for m in self.migrations:
            out.extend(m.lines())
        if self.calibration is not None:
            out.append(f"estimates: {self.calibration.describe()}")
        if not self.target_read and self.target_note:
            out.append(f"target not read: {self.target_note}")
        return out

    def migration(self, filename: str) -> MigrationTrace:
        return next(m for m in self.migrations if m.filename == filename)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": {
                "ok": self.ok,
                "files": len(self.migrations),
                "failing_files": self.failing_files,
                "failing_statements": self.failing_statements,
                "blocking_statements": self.blocking_statements,
                "unknown_checks": self.unknown_checks,
                "not_rehearsed": self.not_rehearsed,
                "text": self.verdict(),
            },
            "target_read": self.target_read,
            "target_note": self.target_note,
            "calibration": None if self.calibration is None else {
                **asdict(self.calibration), "text": self.calibration.describe()
            },
            "migrations": [
                {
                    **{k: v for k, v in asdict(m).items() if k != "statements"},
                    "status": m.status,
                    "statements": [
                        {**asdict(st), "blocking": st.blocking, "failing": st.failing, "text": st.human()}
                        for st in m.statements
                    ],
                }
                for m in self.migrations
            ],
        }

    def to_json(self) -> str:
        """One line of JSON (what a PR comment script parses)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


def read_only_options(conninfo: str) -> str:
    """The conninfo's own `options` with `default_transaction_read_only=on` added (it wins)."""
    given = str(pg_conninfo.conninfo_to_dict(conninfo).get("options") or "")
    return f"{given} -c default_transaction_read_only=on".strip()


def _bytes(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{n} bytes"


def duration_text(ms: float) -> str:
    """A duration as a reviewer reads it: 3 ms, 4.2 s, 12 min, 1.5 h."""
    if ms < 1000:
        return f"{max(1, round(ms))} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    if ms < 7_200_000:
        return f"{ms / 60_000:.0f} min"
    return f"{ms / 3_600_000:.1f} h"


# ============================================================================================ target


class _TargetReader:
    """One read-only session on the target: every read in its own READ ONLY transaction with a
    statement timeout and a short lock timeout, so it takes at most ACCESS SHARE and never runs long.
    Errors of data reads are reported by SQLSTATE only: PostgreSQL's message may quote a value."""

    def __init__(self, conninfo: str, timeout_ms: int, say: Log) -> None:
        self.timeout_ms = int(timeout_ms)
        self.say = say
        self.note: str | None = None
        self.conn: psycopg.Connection[Any] | None = None
        self._sizes: dict[str, RelationSize] = {}
        params: dict[str, Any] = {"application_name": f"{APPLICATION_NAME}-read"}
        if "connect_timeout" not in pg_conninfo.conninfo_to_dict(conninfo) and not os.environ.get("PGCONNECT_TIMEOUT"):
            params["connect_timeout"] = CONNECT_TIMEOUT
        try:
            self.conn = psycopg.connect(
                conninfo, autocommit=True, prepare_threshold=None, options=read_only_options(conninfo), **params
            )
        except psycopg.Error as e:
            self.note = f"cannot connect to the target: {_scrub(str(e).strip(), conninfo)}"
            say(f"rehearsal: {self.note}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def read(
        self, query: sql.Composed | sql.SQL, params: Sequence[Any] = (), *, search_path: str | None = None
    ) -> tuple[list[tuple[Any, ...]] | None, str | None]:
        """(rows, None) or (None, why not)."""
        if self.conn is None:
            return None, self.note
        conn = self.conn
        try:
            conn.execute("BEGIN TRANSACTION READ ONLY")
            conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(self.timeout_ms)))
            conn.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(min(READ_LOCK_TIMEOUT_MS, self.timeout_ms)))
            )
            if search_path is not None:
                conn.execute("SELECT pg_catalog.set_config('search_path', %s, true)", (search_path,))
            rows = conn.execute(query, params or None).fetchall()
            conn.execute("COMMIT")
            return rows, None
        except psycopg.Error as e:
            if not conn.closed:
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    conn.close()
            if conn.closed:
                self.conn, self.note = None, "the target's session was lost"
            if e.sqlstate == "57014":
                return None, f"the read of the target timed out ({self.timeout_ms} ms statement_timeout)"
            if e.sqlstate == "55P03":
                return None, "the target's table is locked by another session (the read gave up waiting)"
            if e.sqlstate in ("42703", "42P01", "42883", "42704"):
                return None, "it refers to something the target does not have yet (added by the pending migrations)"
            return None, f"the read of the target failed (SQLSTATE {e.sqlstate or 'none'})"

    def size(self, relation: tuple[str, str], kind: str) -> RelationSize:
        name = f"{relation[0]}.{relation[1]}"
        if name in self._sizes:
            return self._sizes[name]
        rows, why = self.read(
            sql.SQL(
                "SELECT pg_catalog.pg_relation_size(c.oid), pg_catalog.pg_total_relation_size(c.oid), "
                "c.reltuples::bigint FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s"
            ),
            relation,
        )
        if rows is None or not rows:
            size = RelationSize(name, kind, None, None, None, "unknown", why or "not found on the target")
        else:
            heap, total, tuples = rows[0]
            if tuples >= 0 or kind not in _TABLE_KINDS:
                size = RelationSize(name, kind, heap, total, max(tuples, 0), "estimate")
            elif heap <= COUNT_UNANALYSED_MAX_BYTES:
                counted, why = self.read(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*relation)))
                if counted is None:
                    size = RelationSize(name, kind, heap, total, None, "unknown", f"never analysed; {why}")
                else:
                    size = RelationSize(name, kind, heap, total, counted[0][0], "count", "never analysed: counted")
            else:
                size = RelationSize(name, kind, heap, total, None, "unknown", "never analysed (ANALYZE it)")
        self._sizes[name] = size
        return size


# ============================================================================================ scratch catalog


@dataclass
class _Relation:
    oid: int
    schema: str
    name: str
    kind: str  # RELKINDS value
    relfilenode: int

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class _Catalog:
    relations: dict[int, _Relation]
    columns: dict[tuple[int, int], tuple[str, bool, bool, bool]]  # (rel, attnum) -> name, notnull, hasdef, generated
    constraints: dict[int, tuple[int, str, bool, str, int, int]]  # oid -> rel, type, validated, name, index, frel
    indexes: dict[int, tuple[int, bool, bool]]  # index oid -> table, unique, valid


_RELATIONS_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relfilenode
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
  AND n.nspname NOT LIKE 'pg\\_temp\\_%'
"""


def _read_catalog(conn: psycopg.Connection[Any]) -> _Catalog:
    relations = {
        r[0]: _Relation(r[0], r[1], r[2], RELKINDS.get(r[3], r[3]), r[4]) for r in conn.execute(_RELATIONS_SQL)
    }
    oids = list(relations)
    columns = {
        (r[0], r[1]): (r[2], r[3], r[4], r[5])
        for r in conn.execute(
            "SELECT attrelid::int8, attnum, attname, attnotnull, atthasdef, (attgenerated <> '' OR attidentity <> '') "
            "FROM pg_catalog.pg_attribute WHERE attrelid::int8 = ANY(%s) AND attnum > 0 AND NOT attisdropped",
            (oids,),
        )
    }
    constraints = {
        r[0]: (r[1], r[2], r[3], r[4], r[5], r[6])
        for r in conn.execute(
            "SELECT oid::int8, conrelid::int8, contype::text, convalidated, conname, conindid::int8, confrelid::int8 "
            "FROM pg_catalog.pg_constraint WHERE conrelid::int8 = ANY(%s)",
            (oids,),
        )
    }
    indexes = {
        r[0]: (r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT indexrelid::int8, indrelid::int8, indisunique, indisvalid FROM pg_catalog.pg_index "
            "WHERE indrelid::int8 = ANY(%s)",
            (oids,),
        )
    }
    return _Catalog(relations, columns, constraints, indexes)


def _settings(conn: psycopg.Connection[Any]) -> tuple[str, str, str]:
    row = conn.execute(
        "SELECT pg_catalog.current_setting('lock_timeout'), pg_catalog.current_setting('statement_timeout'), "
        "pg_catalog.current_setting('search_path')"
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _held_locks(conn: psycopg.Connection[Any], pid: int | None = None) -> set[tuple[int, str]]:
    rows = conn.execute(
        "SELECT relation::int8, mode FROM pg_catalog.pg_locks WHERE locktype = 'relation' AND granted "
        "AND pid = coalesce(%s, pg_catalog.pg_backend_pid()) AND database = "
        "(SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())",
        (pid,),
    ).fetchall()
    return {(r[0], LOCK_MODES.get(r[1], r[1])) for r in rows}


# ============================================================================================ tracer


@dataclass
class _Pending:
    """What a statement asks of the target, gathered from the scratch catalog."""

    check: str
    table: int  # oid in the scratch database
    subject: str
    query: Callable[[sql.Identifier], sql.Composed] | None
    search_path: str | None = None
    reason: str | None = None  # set: the check is unknown for this reason


class _Rehearser:
    def __init__(
        self, *, scratch: str, run_as: str, limits: StatementLimits, reader: _TargetReader | None,
        target_note: str | None, calibration: Calibration | None, say: Log,
    ) -> None:
        self.scratch = scratch
        self.run_as = run_as
        self.limits = limits
        self.reader = reader
        self.target_note = target_note
        self.calibration = calibration
        self.say = say
        self.baseline: dict[int, _Relation] = {}
        self.baseline_columns: dict[tuple[int, int], tuple[str, bool, bool, bool]] = {}
        self.written: dict[int, str] = {}  # target table oid -> where rows were written to it first

    def connect(self, suffix: str = "") -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.scratch, autocommit=True, prepare_threshold=None,
            application_name=f"{APPLICATION_NAME}{suffix}", connect_timeout=CONNECT_TIMEOUT,
        )

    # ------------------------------------------------------------------ files

    def file(self, m: MigrationFile) -> MigrationTrace:
        try:
            statements = validate_script(m.filename, m.up_sql, m.transactional)
        except MigrationFileError as e:
            failure = StatementFailure(m.filename, None, "", None, str(e))
            return MigrationTrace(m.filename, m.version, m.transactional, True, error=failure)
        traces: list[StatementTrace] = []
        with self.connect() as conn:
            conn.execute(sql.SQL("SET SESSION AUTHORIZATION {}").format(sql.Identifier(self.run_as)))
            for setting in session_setup(self.limits):
                conn.execute(cast(LiteralString, setting))
            catalog = _read_catalog(conn)
            before_file = set(catalog.relations)
            error = (self._transactional if m.transactional else self._autocommit)(
                conn, m, statements, catalog, before_file, traces
            )
        return MigrationTrace(m.filename, m.version, m.transactional, True, tuple(traces), error)

    def _transactional(
        self, conn: psycopg.Connection[Any], m: MigrationFile, statements: list[Statement], catalog: _Catalog,
        before_file: set[int], traces: list[StatementTrace],
    ) -> StatementFailure | None:
        conn.execute("BEGIN")
        held: dict[tuple[int, str], int] = {}
        for st in statements:
            trace, catalog = self._statement(conn, m, st, catalog, before_file, held, transactional=True)
            traces.append(trace)
            if trace.error is not None:
                conn.execute("ROLLBACK")
                return trace.error
        try:
            conn.execute("COMMIT")
        except psycopg.Error as e:
            last = statements[-1]
            return _failure(m.filename, Statement("COMMIT", last.end_line), e)
        return None

    def _autocommit(
        self, conn: psycopg.Connection[Any], m: MigrationFile, statements: list[Statement], catalog: _Catalog,
        before_file: set[int], traces: list[StatementTrace],
    ) -> StatementFailure | None:
        in_file_transaction = False  # the file's own BEGIN ... COMMIT
        held: dict[tuple[int, str], int] = {}
        for st in statements:
            control = transaction_control(st)
            if control is not None or in_file_transaction:
                if control in ("BEGIN", "START TRANSACTION"):
                    in_file_transaction, held = True, {}
                elif control is not None:
                    in_file_transaction = False
                trace, catalog = self._statement(conn, m, st, catalog, before_file, held)
            else:
                held = {}
                conn.execute("BEGIN")
                trace, catalog = self._statement(conn, m, st, catalog, before_file, held)
                if trace.error is not None and trace.error.sqlstate == "25001":
                    conn.execute("ROLLBACK")
                    trace, catalog = self._outside_transaction(conn, m, st, catalog, before_file)
                elif trace.error is not None:
                    conn.execute("ROLLBACK")
                else:
                    try:
                        conn.execute("COMMIT")
                    except psycopg.Error as e:
                        trace = StatementTrace(st.line, _summary(st), error=_failure(m.filename, st, e))
            traces.append(trace)
            if trace.error is not None:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
                return trace.error
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
            return StatementFailure(
                m.filename, statements[-1].line, statements[-1].text, None,
                "the script leaves a transaction open (a BEGIN without COMMIT): up rolls it back and fails",
            )
        return None

    # ------------------------------------------------------------------ statements

    def _statement(
        self, conn: psycopg.Connection[Any], m: MigrationFile, st: Statement, before: _Catalog,
        before_file: set[int], held: dict[tuple[int, str], int], *, transactional: bool = False,
    ) -> tuple[StatementTrace, _Catalog]:
        started = time.monotonic()
        try:
            conn.execute(cast(LiteralString, st.text))  # a migration file of the repository, run as written
        except psycopg.Error as e:
            failure = _failure(m.filename, st, e, transactional=transactional)
            return StatementTrace(st.line, _summary(st), error=failure), before
        elapsed = (time.monotonic() - started) * 1000
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:  # COMMIT/ROLLBACK of the file
            held.clear()
            return StatementTrace(st.line, _summary(st), scratch_ms=elapsed), _read_catalog(conn)
        locks = _held_locks(conn)
        new_locks = locks - held.keys()
        earlier = dict(held)
        held.update(dict.fromkeys(new_locks, st.line))
        after = _read_catalog(conn)
        settings = _settings(conn)
        trace = self._trace(
            conn, m, st, before, after, before_file, new_locks, settings, elapsed, autocommit=False, earlier=earlier
        )
        return trace, after

    def _outside_transaction(
        self, conn: psycopg.Connection[Any], m: MigrationFile, st: Statement, before: _Catalog, before_file: set[int]
    ) -> tuple[StatementTrace, _Catalog]:
        """Run `st` in autocommit while another session holds a snapshot (a concurrent build waits for
        it, as for a busy server's transactions) and a third polls the locks of its backend."""
        pid = conn.info.backend_pid
        seen: set[tuple[int, str]] = set()
        outcome: dict[str, Any] = {}

        def run() -> None:
            started = time.monotonic()
            try:
                conn.execute(cast(LiteralString, st.text))
            except psycopg.Error as e:
                outcome["error"] = e
            outcome["ms"] = (time.monotonic() - started) * 1000

        with self.connect("-snapshot") as holder, self.connect("-locks") as poller:
            holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT 1")  # takes the snapshot
            worker = threading.Thread(target=run, name="rehearsal-statement", daemon=True)
            worker.start()
            released = False
            deadline = time.monotonic() + SNAPSHOT_RELEASE_AFTER_S
            while worker.is_alive():
                rows = poller.execute(
                    "SELECT locktype, relation::int8, mode, granted FROM pg_catalog.pg_locks WHERE pid = %s", (pid,)
                ).fetchall()
                seen |= {(r[1], LOCK_MODES.get(r[2], r[2])) for r in rows if r[0] == "relation" and r[3]}
                waiting = any(not r[3] for r in rows)
                if not released and (waiting or time.monotonic() > deadline):
                    holder.execute("COMMIT")
                    released = True
                worker.join(0.005)
            if not released:
                holder.execute("COMMIT")
        if "error" in outcome:
            failure = _failure(m.filename, st, outcome["error"])
            return StatementTrace(st.line, _summary(st), error=failure, autocommit=True), before
        after = _read_catalog(conn)
        settings = _settings(conn)
        trace = self._trace(conn, m, st, before, after, before_file, seen, settings, outcome["ms"], autocommit=True)
        return trace, after

    # ------------------------------------------------------------------ what a statement did

    def _trace(
        self, conn: psycopg.Connection[Any], m: MigrationFile, st: Statement, before: _Catalog, after: _Catalog,
        before_file: set[int], new_locks: set[tuple[int, str]], settings: tuple[str, str, str], elapsed: float,
        *, autocommit: bool, earlier: dict[tuple[int, str], int] | None = None,
    ) -> StatementTrace:
        lock_timeout, statement_timeout, search_path = settings
        known = {**before.relations, **{o: r for o, r in after.relations.items() if o in before_file}}
        locks = sorted(
            {
                LockTaken(mode, known[oid].qualified, known[oid].kind, oid in self.baseline)
                for oid, mode in new_locks
                if oid in before_file and oid in known
            },
            key=lambda lk: (-_STRENGTH.get(lk.mode, 0), lk.relation),
        )
        truncate = _first_word(st) == "TRUNCATE"
        rewrites: list[Rewrite] = []
        rewritten_tables: set[int] = set()
        reused_files = {r.relfilenode for r in before.relations.values()}
        for oid in before_file:
            old, new = before.relations.get(oid), after.relations.get(oid)
            if old is None or new is None or old.relfilenode == 0 or old.relfilenode == new.relfilenode:
                continue
            rewrites.append(Rewrite(old.qualified, old.kind, oid in self.baseline, truncate))
            if old.kind in _TABLE_KINDS:
                rewritten_tables.add(oid)
        scans: list[ValidationScan] = []
        pending: list[_Pending] = []

        def table_of(oid: int) -> _Relation | None:
            return self.baseline.get(oid) if oid in before_file else None

        # Columns: NOT NULL newly set on an existing column, a new NOT NULL column without a default.
        for (rel, attnum), (name, notnull, hasdef, generated) in after.columns.items():
            table = table_of(rel)
            if table is None or table.kind not in _TABLE_KINDS:
                continue
            old_col = before.columns.get((rel, attnum))
            if old_col is not None and notnull and not old_col[1]:
                if rel not in rewritten_tables:
                    scans.append(ValidationScan(table.qualified, f"SET NOT NULL on {name}", True))
                target_name = self.baseline_columns.get((rel, attnum), (name,))[0]
                pending.append(_Pending("not_null", rel, target_name, _null_query(target_name)))
            elif old_col is None and notnull and not hasdef and not generated:
                pending.append(_Pending("rows", rel, name, _count_query()))
        # Constraints: a CHECK or FOREIGN KEY that is valid now and was not before.
        recreated = {  # dropped and re-created by the statement (ALTER COLUMN TYPE re-creates them)
            (c[0], c[3]) for o, c in before.constraints.items() if o not in after.constraints
        }
        for oid, (rel, contype, validated, name, _index, frel) in after.constraints.items():
            table = table_of(rel)
            if table is None or contype not in ("c", "f") or not validated:
                continue
            old_con = before.constraints.get(oid)
            if old_con is not None and old_con[2]:
                continue
            what = "CHECK" if contype == "c" else "FOREIGN KEY"
            if (rel, name) in recreated:
                # The target's rows satisfy it already; a re-created CHECK is checked again by a full
                # scan, a foreign key whose columns kept their files is not.
                if contype == "c" and rel not in rewritten_tables:
                    scans.append(ValidationScan(table.qualified, f"{what} {name} checked again (re-created)", True))
                continue
            verb = "validated" if old_con is not None else "added"
            if rel not in rewritten_tables:
                scans.append(ValidationScan(table.qualified, f"{what} {name} {verb}", True))
            if contype == "c":
                pending.append(self._check_constraint(conn, oid, rel, name, search_path))
            else:
                pending.append(self._foreign_key(conn, oid, rel, frel, name))
        # Indexes: built on an existing table (a new index whose files are new).
        constraint_of = {c[4]: (c[3], c[1]) for c in after.constraints.values() if c[4]}
        dropped = [i for i in before.indexes if i not in after.indexes]
        dropped_unique = {before.relations[i].name for i in dropped if before.indexes[i][1]}
        for oid, (rel, unique, valid) in after.indexes.items():
            table = table_of(rel)
            index = after.relations.get(oid)
            if table is None or index is None or oid in before.indexes or table.kind not in _TABLE_KINDS:
                continue
            if index.relfilenode in reused_files:  # ALTER COLUMN TYPE kept the index's files
                continue
            rebuilt = any(before.relations[i].name == index.name for i in dropped)
            if rebuilt:
                rewrites.append(Rewrite(f"{index.schema}.{index.name}", index.kind, True))
            else:
                scans.append(ValidationScan(table.qualified, f"index {index.name} built", True, "index"))
            name, contype = constraint_of.get(oid, (index.name, "i"))
            if contype == "x":
                pending.append(_Pending("exclusion", rel, name, None,
                                        reason="exclusion constraints are not checked on the target's data"))
            elif unique and valid and not (rebuilt and index.name in dropped_unique):
                pending.append(self._unique(conn, oid, rel, name, search_path))
        checks = tuple(self._run_check(p, m, st) for p in pending)
        for oid, mode in new_locks:
            if mode == "ROW EXCLUSIVE" and oid in self.baseline:
                self.written.setdefault(oid, f"{m.filename} line {st.line}")
        locks.extend(self._still_held(earlier or {}, locks, rewrites, scans, known, before_file))
        sizes = self._sizes(locks, rewrites, scans)
        estimate, basis = self._estimate(rewrites, scans, sizes, elapsed)
        created = tuple(sorted(r.qualified for o, r in after.relations.items() if o not in before.relations))
        return StatementTrace(
            line=st.line, summary=_summary(st), created=created, locks=tuple(locks), rewrites=tuple(rewrites),
            scans=tuple(scans),
            lock_timeout=lock_timeout, statement_timeout=statement_timeout, sizes=sizes, checks=checks,
            scratch_ms=round(elapsed, 3), estimate_ms=estimate, estimate_basis=basis, autocommit=autocommit,
        )

    def _still_held(
        self, earlier: dict[tuple[int, str], int], locks: list[LockTaken], rewrites: list[Rewrite],
        scans: list[ValidationScan], known: dict[int, _Relation], before_file: set[int],
    ) -> list[LockTaken]:
        """The stronger locks an earlier statement of the transaction took on the relations this one
        locks, rewrites or scans: it needs them too, and holds them already."""
        touched = {lk.relation for lk in locks} | {r.relation for r in rewrites} | {s.relation for s in scans}
        strongest: dict[str, int] = {}
        for lk in locks:
            strongest[lk.relation] = max(strongest.get(lk.relation, -1), _STRENGTH.get(lk.mode, 0))
        found: dict[str, LockTaken] = {}
        for (oid, mode), line in sorted(earlier.items(), key=lambda kv: kv[1]):
            rel = known.get(oid)
            if rel is None or oid not in before_file or rel.qualified not in touched:
                continue
            if _STRENGTH.get(mode, 0) <= strongest.get(rel.qualified, -1):
                continue
            current = found.get(rel.qualified)
            if current is None or _STRENGTH[mode] > _STRENGTH[current.mode]:
                found[rel.qualified] = LockTaken(mode, rel.qualified, rel.kind, oid in self.baseline, line)
        return list(found.values())

    # ------------------------------------------------------------------ checks derived from the catalog

    def _check_constraint(self, conn: psycopg.Connection[Any], oid: int, rel: int, name: str, path: str) -> _Pending:
        row = conn.execute(
            "SELECT pg_catalog.pg_get_expr(conbin, conrelid) FROM pg_catalog.pg_constraint WHERE oid = %s::int8::oid",
            (oid,),
        ).fetchone()
        if row is None or row[0] is None:
            return _Pending("check", rel, name, None, reason="its expression could not be read")
        expression = sql.SQL(row[0])  # deparsed by PostgreSQL from the migration's own constraint

        def query(table: sql.Identifier) -> sql.Composed:
            return sql.SQL("SELECT count(*) FROM {} WHERE NOT ({})").format(table, expression)

        return _Pending("check", rel, name, query, search_path=path)

    def _unique(self, conn: psycopg.Connection[Any], oid: int, rel: int, name: str, path: str) -> _Pending:
        row = conn.execute(
            "SELECT i.indnkeyatts, pg_catalog.pg_get_expr(i.indpred, i.indrelid), "
            "coalesce((pg_catalog.to_jsonb(i) ->> 'indnullsnotdistinct')::bool, false), "
            "ARRAY(SELECT pg_catalog.pg_get_indexdef(i.indexrelid, k, false) "
            "      FROM pg_catalog.generate_series(1, i.indnkeyatts) AS k ORDER BY k) "
            "FROM pg_catalog.pg_index i WHERE i.indexrelid = %s::int8::oid",
            (oid,),
        ).fetchone()
        if row is None:
            return _Pending("unique", rel, name, None, reason="its definition could not be read")
        _n, predicate, nulls_not_distinct, keys = row
        key_sql = [sql.SQL(k) for k in keys]  # deparsed key columns/expressions of the new index
        conditions: list[sql.Composed] = []
        if not nulls_not_distinct:
            conditions.extend(sql.SQL("({}) IS NOT NULL").format(k) for k in key_sql)
        if predicate:
            conditions.append(sql.SQL("({})").format(sql.SQL(predicate)))
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")

        def query(table: sql.Identifier) -> sql.Composed:
            return sql.SQL(
                "SELECT count(*) FROM (SELECT 1 FROM {}{} GROUP BY {} HAVING count(*) > 1) AS duplicate_keys"
            ).format(table, where, sql.SQL(", ").join(key_sql))

        return _Pending("unique", rel, name, query, search_path=path)

    def _foreign_key(self, conn: psycopg.Connection[Any], oid: int, rel: int, frel: int, name: str) -> _Pending:
        row = conn.execute(
            "SELECT c.confmatchtype::text, "
            "ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY AS k(n, i) JOIN pg_catalog.pg_attribute a "
            "      ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i), "
            "ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY AS k(n, i) JOIN pg_catalog.pg_attribute a "
            "      ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i) "
            "FROM pg_catalog.pg_constraint c WHERE c.oid = %s::int8::oid",
            (oid,),
        ).fetchone()
        if row is None:
            return _Pending("foreign_key", rel, name, None, reason="its definition could not be read")
        match, keys, refs = row
        child = [sql.SQL("c.{}").format(sql.Identifier(k)) for k in keys]
        all_set = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(k) for k in child)
        if match == "f":  # MATCH FULL: a key is either all NULL (not checked) or must reference a row
            any_set = sql.SQL(" OR ").join(sql.SQL("{} IS NOT NULL").format(k) for k in child)
            checked = sql.SQL("({})").format(any_set)
        else:
            checked = sql.SQL("({})").format(all_set)
        parent = self.baseline.get(frel)
        if parent is None:
            if frel in self.written:
                return _Pending("foreign_key", rel, name, None,
                                reason="the referenced table is new and gets rows from the pending migrations")

            def orphans_of_new(table: sql.Identifier) -> sql.Composed:  # a new referenced table is empty
                return sql.SQL("SELECT count(*) FROM {} AS c WHERE {}").format(table, checked)

            return _Pending("foreign_key", rel, name, orphans_of_new)
        if frel in self.written and frel != rel:
            return _Pending(
                "foreign_key", rel, name, None,
                reason=f"rows are written to the referenced {parent.qualified} first ({self.written[frel]})",
            )
        join = sql.SQL(" AND ").join(
            sql.SQL("p.{} = c.{}").format(sql.Identifier(r), sql.Identifier(k)) for r, k in zip(refs, keys, strict=True)
        )
        parent_sql = sql.Identifier(parent.schema, parent.name)

        def orphans(table: sql.Identifier) -> sql.Composed:
            return sql.SQL(
                "SELECT count(*) FROM {} AS c WHERE {} AND NOT EXISTS (SELECT 1 FROM {} AS p WHERE {})"
            ).format(table, checked, parent_sql, join)

        return _Pending("foreign_key", rel, name, orphans)

    def _run_check(self, p: _Pending, m: MigrationFile, st: Statement) -> DataCheck:
        table = self.baseline[p.table]
        if p.reason is not None or p.query is None:
            return DataCheck(p.check, table.qualified, p.subject, "unknown", reason=p.reason)
        if p.table in self.written:
            return DataCheck(
                p.check, table.qualified, p.subject, "unknown",
                reason=f"rows are written to the table before it ({self.written[p.table]}): the target's rows "
                "are not the rows it will meet",
            )
        if self.reader is None:
            return DataCheck(p.check, table.qualified, p.subject, "unknown", reason=self.target_note)
        target_table = sql.Identifier(table.schema, table.name)
        rows, why = self.reader.read(p.query(target_table), search_path=p.search_path)
        if rows is None and p.check == "rows":
            # Counting a big table may time out; one row is enough to make the statement fail.
            found, _ = self.reader.read(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(target_table))
            if found is not None and found[0][0]:
                size = self.reader.size((table.schema, table.name), table.kind)
                estimate = max(size.rows or 0, 1)
                return DataCheck(
                    p.check, table.qualified, p.subject, "failed", estimate,
                    reason=f"counting gave up ({why}): the table has rows, about {estimate:,} by estimate",
                )
        if rows is None:
            return DataCheck(p.check, table.qualified, p.subject, "unknown", reason=why)
        count = int(rows[0][0])
        status = "failed" if count > 0 else "passed"
        self.say(f"rehearsal: {m.filename} line {st.line}: {p.check} check on {table.qualified}: {status}")
        return DataCheck(p.check, table.qualified, p.subject, status, count)

    # ------------------------------------------------------------------ sizes and estimates

    def _sizes(
        self, locks: Iterable[LockTaken], rewrites: Iterable[Rewrite], scans: Iterable[ValidationScan]
    ) -> tuple[RelationSize, ...]:
        if self.reader is None:
            return ()
        by_name = {r.qualified: r for r in self.baseline.values()}
        wanted: dict[str, str] = {}
        items: list[LockTaken | Rewrite | ValidationScan] = [*locks, *rewrites, *scans]
        for item in items:
            if item.on_target and item.relation in by_name:
                wanted[item.relation] = by_name[item.relation].kind
        return tuple(
            self.reader.size((by_name[name].schema, by_name[name].name), kind) for name, kind in sorted(wanted.items())
        )

    def _estimate(
        self, rewrites: Sequence[Rewrite], scans: Sequence[ValidationScan], sizes: Sequence[RelationSize],
        elapsed: float,
    ) -> tuple[float | None, str]:
        work = [r for r in rewrites if r.on_target and not r.truncate and r.kind in _TABLE_KINDS]
        reads = [s for s in scans if s.on_target]
        if not work and not reads:
            return elapsed, "catalog only: as on the scratch database"
        if self.reader is None or self.calibration is None:
            return None, "the target's sizes are not known"
        by_name = {s.relation: s for s in sizes}
        cal = self.calibration
        total = elapsed
        parts = []
        for r in work:
            size = by_name.get(r.relation)
            if size is None or size.total_bytes is None:
                return None, f"the size of {r.relation} is not known"
            total += size.total_bytes / (cal.rewrite_mb_s * 1e6) * 1000
            parts.append(f"rewrite {_bytes(size.total_bytes)} at {cal.rewrite_mb_s:.0f} MB/s")
        for s in reads:
            size = by_name.get(s.relation)
            if size is None or size.heap_bytes is None:
                return None, f"the size of {s.relation} is not known"
            rate = cal.index_mb_s if s.kind == "index" else cal.scan_mb_s
            total += size.heap_bytes / (rate * 1e6) * 1000
            what = "index build" if s.kind == "index" else "scan"
            parts.append(f"{what} {_bytes(size.heap_bytes)} at {rate:.0f} MB/s")
        return total, "; ".join(parts) + ", rates of the scratch server"


def _null_query(column: str) -> Callable[[sql.Identifier], sql.Composed]:
    def query(table: sql.Identifier) -> sql.Composed:
        return sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(table, sql.Identifier(column))

    return query


def _count_query() -> Callable[[sql.Identifier], sql.Composed]:
    def query(table: sql.Identifier) -> sql.Composed:
        return sql.SQL("SELECT count(*) FROM {}").format(table)

    return query


def _first_word(st: Statement) -> str:
    words = st.text.split(None, 1)
    return words[0].upper().rstrip(";") if words else ""


def _summary(st: Statement) -> str:
    return excerpt(st.text.rstrip().rstrip(";"), 80)


def _failure(filename: str, st: Statement, e: psycopg.Error, *, transactional: bool = False) -> StatementFailure:
    diag = e.diag
    hint = diag.message_hint
    if e.sqlstate == "25001" and transactional:  # as up words it
        hint = f"{hint}; {NOT_IN_TRANSACTION_HINT}" if hint else NOT_IN_TRANSACTION_HINT
    return StatementFailure(
        filename=filename,
        line=st.line_at(diag.statement_position),
        statement=st.text,
        sqlstate=e.sqlstate,
        message=diag.message_primary or str(e).strip() or type(e).__name__,
        detail=diag.message_detail,
        hint=hint,
    )


# ============================================================================================ calibration


def calibrate(scratch: str, *, rows: int = CALIBRATION_ROWS, server: str = "scratch") -> Calibration:
    """MB/s of a rewrite, a full scan and an index build of a synthetic table of `rows` rows on the
    scratch database (a logged table, as the target's are, dropped afterwards)."""
    schema_name = f"rehearsal_calibration_{secrets.token_hex(4)}"
    schema = sql.Identifier(schema_name)
    table = sql.SQL("{}.t").format(schema)
    regclass = f"{schema_name}.t"
    with psycopg.connect(
        scratch, autocommit=True, application_name=f"{APPLICATION_NAME}-calibrate", connect_timeout=CONNECT_TIMEOUT
    ) as conn:
        conn.execute("SET statement_timeout = 60000")
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        try:
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} AS SELECT g AS id, pg_catalog.md5(g::text) AS a, "
                    "pg_catalog.md5((g * 7)::text) AS b FROM pg_catalog.generate_series(1, %s) AS g"
                ).format(table),
                (rows,),
            )
            heap = _one_int(conn, "SELECT pg_catalog.pg_relation_size(%s::regclass)", regclass)
            scan_s = _timed(conn, sql.SQL("SELECT count(*) FROM {} WHERE a IS NULL").format(table))
            index_s = _timed(conn, sql.SQL("CREATE INDEX ON {} (id)").format(table))
            total = _one_int(conn, "SELECT pg_catalog.pg_total_relation_size(%s::regclass)", regclass)
            rewrite_s = _timed(conn, sql.SQL("ALTER TABLE {} ALTER COLUMN id TYPE bigint").format(table))
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(schema))
    mb = 1e6
    return Calibration(
        bytes=heap,
        rewrite_mb_s=round(total / mb / max(rewrite_s, 1e-4), 1),
        scan_mb_s=round(heap / mb / max(scan_s, 1e-4), 1),
        index_mb_s=round(heap / mb / max(index_s, 1e-4), 1),
        server=server,
    )


def _timed(conn: psycopg.Connection[Any], statement: sql.Composed) -> float:
    started = time.monotonic()
    conn.execute(statement)
    return time.monotonic() - started


def _one_int(conn: psycopg.Connection[Any], query: LiteralString, param: str) -> int:
    row = conn.execute(query, (param,)).fetchone()
    assert row is not None
    return int(row[0])


# ============================================================================================ entry point


def rehearse(
    pending: Sequence[MigrationFile],
    *,
    scratch: str,
    run_as: str,
    target: str | None,
    limits: StatementLimits,
    read_timeout_ms: int = 10000,
    log: Log | None = None,
    scratch_description: str = "scratch",
) -> Rehearsal:
    """Run `pending` in order on the scratch database `scratch` (a superuser conninfo of a copy of the
    target's schema, see `scratch.scratch_database`) as `run_as`, and check what they do against the
    target's sizes and data (`target`: its conninfo, read-only; None: there is no target yet).
    Each file is committed in the scratch database so the next sees it; the first failing file ends
    the rehearsal (the later ones are reported as not rehearsed). No pending file: nothing connects."""
    say = log if log is not None else _noop
    if not pending:
        return Rehearsal((), None, False, "no pending migration")
    reader = _TargetReader(target, read_timeout_ms, say) if target is not None else None
    note = "no target database yet (first preview)" if target is None else reader.note if reader else None
    try:
        calibration = calibrate(scratch, server=scratch_description)
        rehearser = _Rehearser(
            scratch=scratch, run_as=run_as, limits=limits, reader=reader if reader and reader.conn else None,
            target_note=note, calibration=calibration, say=say,
        )
        with rehearser.connect() as conn:
            catalog = _read_catalog(conn)
        rehearser.baseline = catalog.relations
        rehearser.baseline_columns = catalog.columns
        traces: list[MigrationTrace] = []
        failed: str | None = None
        for m in pending:
            if failed is not None:
                traces.append(MigrationTrace(
                    m.filename, m.version, m.transactional, False,
                    reason=f"{failed} fails before it (up stops there)",
                ))
                continue
            say(f"rehearsal: {m.filename}")
            trace = rehearser.file(m)
            traces.append(trace)
            if trace.failing:
                failed = m.filename
        return Rehearsal(tuple(traces), calibration, rehearser.reader is not None, note)
    except psycopg.Error as e:  # outside a migration's statements: the scratch session itself failed
        raise RehearsalError(
            f"the rehearsal failed on the scratch database ({scratch_description}): "
            f"{_scrub(str(e).strip(), scratch, *([target] if target else []))}"
        ) from e
    finally:
        if reader is not None:
            reader.close()
