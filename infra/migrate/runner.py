"""`Migrator`: applies, adopts, reverts and repairs migrations on one database.

Every public method opens its own connection (autocommit, `application_name`, `connect_timeout`),
and every method that writes holds the migration advisory lock (see `locking`) for its whole duration,
so two migrators of one database under the same lock name (two deployments, or a deployment and a
command line) never interleave and never apply a migration twice: under the lock the record is read
again, and an already recorded migration with the same checksum is adopted instead of run. Instances
keep only plain values (picklable, for callers that run them in another process); nothing connects at
import or construction time.

Every file runs under `StatementLimits` (see `session`): a lock timeout set before its first
statement, and, when a statement fails with lock_not_available (55P03), the file is tried again after a
growing wait, a bounded number of times (a transactional file from its start, its failed attempt
rolled back; a `-- migrate:no-transaction` file from the failed statement, the ones before it stay).
Each wait is logged with who blocked the statement; after the last attempt `MigrationBlockedError`
names them. An INVALID index that a failed `CREATE INDEX CONCURRENTLY` of the file left (in this run
or an earlier one) is dropped before the file's statements run again.

Strict order (dbmate's strict mode): a pending migration whose version is below the highest applied
one is refused with `OutOfOrderMigrationError` before anything runs, unless the migrator is built with
`allow_out_of_order=True`. On a fresh database every file runs in version order; a file added later
below an applied version would run after it, and the two databases could differ.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, LiteralString, cast

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import sql

from . import tracking
from .blockers import BlockerWatch, describe_blockers
from .errors import (
    ChecksumMismatchError,
    MigrationBlockedError,
    MigrationFailedError,
    MigrationsError,
    OutOfOrderMigrationError,
    RenamedMigrationError,
)
from .files import NO_TRANSACTION_MARKER, MigrationFile, validate_script
from .locking import DEFAULT_LOCK_NAME, migration_lock
from .session import (
    CONNECT_TIMEOUT,
    LOCK_NOT_AVAILABLE,
    StatementLimits,
    concurrent_index_name,
    exempt_from_statement_timeout,
    retry_delays,
    session_setup,
)
from .statements import Statement
from .tracking import AppliedMigration, highest_of, version_number

DEFAULT_APPLICATION_NAME = "migrations"

_NOT_IN_TRANSACTION_HINT = (
    f"this statement cannot run inside a transaction: put `{NO_TRANSACTION_MARKER}` in the file's "
    "header (its leading comment lines) so its statements run one by one, in autocommit"
)


# A script may `SET ROLE` (e.g. to make an owner role own what it creates): the tracking write is done
# as the connecting user again (it owns public.schema_migrations; applied_by names it).
_RESET_ROLE = "RESET ROLE"


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class Migrator:
    def __init__(
        self,
        conninfo: str,
        *,
        lock_timeout: float = 60.0,
        log: Callable[[str], None] | None = None,
        application_name: str = DEFAULT_APPLICATION_NAME,
        lock_name: str = DEFAULT_LOCK_NAME,
        allow_out_of_order: bool = False,
        limits: StatementLimits | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.conninfo = conninfo
        self.allow_out_of_order = allow_out_of_order
        self.lock_timeout = lock_timeout  # the migration advisory lock's wait (seconds), see `locking`
        self.log = log
        self.application_name = application_name  # of every session, as pg_stat_activity shows it
        self.lock_name = lock_name  # migrators with the same lock name never interleave, see `locking`
        self.limits = limits if limits is not None else StatementLimits()
        self.sleep = sleep

    def __repr__(self) -> str:  # never show the conninfo: it may carry a password
        return (
            f"Migrator(application_name={self.application_name!r}, lock_name={self.lock_name!r}, "
            f"lock_timeout={self.lock_timeout!r}, allow_out_of_order={self.allow_out_of_order!r}, "
            f"limits={self.limits!r})"
        )

    # ---------------------------------------------------------------- connections

    def _say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    def _connect(self, application_name: str | None = None) -> psycopg.Connection[Any]:
        params: dict[str, Any] = {"application_name": application_name or self.application_name}
        try:
            given = pg_conninfo.conninfo_to_dict(self.conninfo)
        except psycopg.ProgrammingError as e:
            raise MigrationsError(f"invalid database connection string: {e}") from e
        if "connect_timeout" not in given and not os.environ.get("PGCONNECT_TIMEOUT"):
            params["connect_timeout"] = CONNECT_TIMEOUT
        try:
            return psycopg.connect(self.conninfo, autocommit=True, prepare_threshold=None, **params)
        except psycopg.Error as e:
            raise MigrationsError(f"cannot connect to the database: {e}".rstrip()) from e

    @contextmanager
    def _session(self, *, locked: bool) -> Iterator[psycopg.Connection[Any]]:
        conn = self._connect()
        try:
            if locked:
                with migration_lock(conn, self.lock_timeout, self._say, name=self.lock_name):
                    yield conn
            else:
                yield conn
        except psycopg.Error as e:  # a failure outside a migration's statements (tracking, lock, network)
            raise MigrationsError(f"database error: {e}".rstrip()) from e
        finally:
            conn.close()

    # ---------------------------------------------------------------- reading

    def applied(self) -> dict[str, AppliedMigration]:
        """Every applied migration by version (in version order); {} if the tracking table doesn't exist."""
        with self._session(locked=False) as conn:
            return tracking.fetch_all(conn)

    def check(self, m: MigrationFile) -> AppliedMigration | None:
        """None if `m` is not applied; its record if applied with the same checksum; otherwise
        ChecksumMismatchError."""
        with self._session(locked=False) as conn:
            record = tracking.fetch(conn, m.version)
        if record is not None:
            _same_checksum(m, record)
        return record

    # ---------------------------------------------------------------- writing

    def apply(self, m: MigrationFile) -> tuple[AppliedMigration, bool]:
        """Apply `m` (or adopt it when it is already recorded with the same checksum: nothing runs).
        Returns (record, adopted). OutOfOrderMigrationError, before anything runs, if `m` is not applied
        but a higher version is, unless `allow_out_of_order`."""
        statements = validate_script(m.filename, m.up_sql, m.transactional)
        with self._session(locked=True) as conn:
            tracking.ensure_table(conn)
            record = tracking.fetch(conn, m.version)
            if record is not None:
                if record.name != m.name:  # a rename or a swap: adopting it would hide a revert of the old name
                    check_identity(m, tracking.fetch_all(conn))
                _same_checksum(m, record)
                self._say(f"{m.filename}: already recorded, adopted")
                return record, True
            if not self.allow_out_of_order:
                check_order(m, tracking.highest(conn))
            elif (highest := tracking.highest(conn)) and version_number(highest.version) > version_number(m.version):
                self._say(f"{m.filename}: applied out of order (after {highest.version}), as allowed")
            self._say(f"{m.filename}: applying ({_mode(m.transactional)})")

            def record_it(duration_ms: int) -> AppliedMigration:
                return tracking.insert(conn, m.version, m.name, m.checksum, duration_ms)

            record = self._run(conn, m.filename, m.up_sql, statements, m.transactional, record_it)
            self._say(f"{m.filename}: applied in {record.duration_ms} ms")
            return record, False

    def apply_all(self, migrations: Sequence[MigrationFile]) -> list[tuple[AppliedMigration, bool]]:
        """Apply the pending ones of `migrations` in order, stopping at the first failure (which is
        raised). Before running anything, every already recorded one is checked (ChecksumMismatchError)
        and, unless `allow_out_of_order`, no pending one may be below the highest applied version
        (OutOfOrderMigrationError for the first). Returns what `apply` returned for each migration that
        was pending when it started."""
        recorded = self.applied()
        pending = []
        for m in sorted(migrations, key=lambda m: int(m.version)):
            record = recorded.get(m.version)
            if record is None:
                pending.append(m)
            else:
                _same_checksum(m, record)
        if not self.allow_out_of_order:
            highest = highest_of(recorded.values())
            for m in pending:
                check_order(m, highest)
        return [self.apply(m) for m in pending]

    def revert(self, m: MigrationFile) -> bool:
        """Run `m`'s down script and delete its record (one transaction unless the down script's header
        says `-- migrate:no-transaction`). False if `m` is not applied. MigrationsError if it has no down
        script; ChecksumMismatchError if the applied version differs from the file."""
        with self._session(locked=True) as conn:
            record = tracking.fetch(conn, m.version)
            if record is None:
                self._say(f"{m.filename}: not applied, nothing to revert")
                return False
            _same_checksum(m, record)
            if m.down_sql is None:
                raise MigrationsError(
                    f"{m.filename}: cannot revert: there is no down script {m.down_filename}. Write one "
                    "(the SQL that undoes the migration), or undo it by hand and delete its row from "
                    f"public.schema_migrations (version '{m.version}')."
                )
            down_transactional = m.down_transactional
            statements = validate_script(m.down_filename, m.down_sql, down_transactional)
            self._say(f"{m.down_filename}: reverting {m.filename} ({_mode(down_transactional)})")

            def forget_it(duration_ms: int) -> AppliedMigration:
                tracking.delete(conn, m.version)
                return record

            started = time.monotonic()
            try:
                self._run(conn, m.down_filename, m.down_sql, statements, down_transactional, forget_it)
            except MigrationFailedError as failed:
                raise failed.reverting(m.filename) from failed.__cause__
            self._say(f"{m.down_filename}: reverted in {_ms(time.monotonic() - started)} ms")
            return True

    def repair(self, m: MigrationFile) -> AppliedMigration:
        """Record `m.checksum` (and name) for the already applied `m.version`, running nothing."""
        with self._session(locked=True) as conn:
            tracking.ensure_table(conn)
            before = tracking.fetch(conn, m.version)
            if before is None:
                raise MigrationsError(
                    f"{m.filename}: cannot repair: version {m.version} is not applied (no row in "
                    "public.schema_migrations); apply it instead"
                )
            record = tracking.update_checksum(conn, m.version, m.name, m.checksum)
            assert record is not None
        if before.checksum == m.checksum:
            self._say(f"{m.filename}: checksum already {m.checksum}, nothing to repair")
        else:
            self._say(f"{m.filename}: repaired: recorded checksum {before.checksum} -> {m.checksum}")
        return record

    def rename(self, m: MigrationFile) -> AppliedMigration:
        """Record `m.name` for the applied `m.version` (same checksum: a renamed file), running nothing."""
        with self._session(locked=True) as conn:
            before = tracking.fetch(conn, m.version)
            if before is None:
                raise MigrationsError(
                    f"{m.filename}: cannot record its new name: version {m.version} is not applied (no row in "
                    "public.schema_migrations)"
                )
            _same_checksum(m, before)
            record = tracking.update_checksum(conn, m.version, m.name, m.checksum)
            assert record is not None
        if before.name != m.name:
            self._say(f"{m.filename}: recorded its new name ({before.name} -> {m.name}); nothing ran")
        return record

    # ---------------------------------------------------------------- execution

    def _run(
        self,
        conn: psycopg.Connection[Any],
        filename: str,
        script: str,
        statements: list[Statement],
        transactional: bool,
        finish: Callable[[int], AppliedMigration],
    ) -> AppliedMigration:
        """Run `statements` then `finish(duration_ms)` (the tracking write) under `self.limits`: in one
        transaction, or (non-transactional) one by one in autocommit, then the tracking write on its
        own; tried again while a statement fails with lock_not_available and attempts are left."""

        def on_notice(diag: psycopg.errors.Diagnostic) -> None:
            self._say(f"{filename}: {diag.severity or 'NOTICE'}: {diag.message_primary}")

        limits = self.limits
        delays = retry_delays(limits)
        attempts = len(delays) + 1
        for setup in session_setup(limits):  # once: a file's own session-level SET outlives a failed statement
            conn.execute(cast(LiteralString, setup))
        progress: list[int] = []  # non-transactional: lines of the statements that ran (they stay)
        started = time.monotonic()
        conn.add_notice_handler(on_notice)
        try:
            with BlockerWatch(lambda: self._connect(_watch_name(self.application_name)),
                              conn.info.backend_pid) as watch:
                for attempt in range(1, attempts + 1):
                    try:
                        if not transactional:
                            self._drop_invalid_indexes(conn, filename, statements[len(progress):], progress, watch)
                            return self._run_autocommit(conn, filename, statements, finish, started, progress, watch)
                        return self._run_transactional(conn, filename, script, statements, finish, started, watch)
                    except MigrationFailedError as failed:
                        if failed.sqlstate != LOCK_NOT_AVAILABLE or (
                            not transactional and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
                        ):  # a script's own BEGIN block failed: it cannot resume mid-transaction
                            raise
                        blockers = describe_blockers(watch.last)
                        if attempt == attempts:
                            raise MigrationBlockedError(
                                failed, attempts=attempts, waited_s=time.monotonic() - started,
                                blockers=[b.describe() for b in watch.last],
                            ) from None
                        undone = (
                            "its transaction was rolled back" if transactional
                            else f"{len(progress)} statement(s) before it ran and stay; the next attempt starts "
                                 "at this statement"
                        )
                        self._say(
                            f"{filename}, line {failed.line}: {failed.pg_message} (attempt {attempt} of "
                            f"{attempts}): blocked by {blockers}; {undone}; trying again in "
                            f"{delays[attempt - 1]:g} s"
                        )
                        self.sleep(delays[attempt - 1])
            raise AssertionError("unreachable: the last attempt returns or raises")
        finally:
            conn.remove_notice_handler(on_notice)

    def _drop_invalid_indexes(
        self,
        conn: psycopg.Connection[Any],
        filename: str,
        statements: Sequence[Statement],
        done: Sequence[int],
        watch: BlockerWatch,
    ) -> None:
        """Drop the INVALID indexes that the `CREATE INDEX CONCURRENTLY` statements among `statements`
        would build: a failed concurrent build leaves its index behind, INVALID (not used by queries,
        yet maintained by every write), and `IF NOT EXISTS` would then keep it as it is."""
        for st in statements:
            name = concurrent_index_name(st)
            if name is None:
                continue
            try:
                row = conn.execute(
                    "SELECT n.nspname, c.relname FROM pg_catalog.pg_index i "
                    "JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
                    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE i.indexrelid = pg_catalog.to_regclass(%s) AND NOT i.indisvalid",
                    (name,),
                ).fetchone()
            except psycopg.Error:  # a name to_regclass cannot parse: the statement itself will say
                continue
            if row is None:
                continue
            drop = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(row[0], row[1]))
            self._say(
                f"{filename}, line {st.line}: index {row[0]}.{row[1]} is INVALID (left by a failed "
                "CREATE INDEX CONCURRENTLY); dropping it (DROP INDEX CONCURRENTLY) before building it again"
            )
            watch.start_statement()
            try:
                conn.execute(drop)
            except psycopg.Error as e:
                raise _failed(filename, drop.as_string(conn), st.line, e, transactional=False,
                              completed_lines=list(done)) from e
            finally:
                watch.end_statement()
            self._say(f"{filename}: dropped the INVALID index {row[0]}.{row[1]}")

    def _run_transactional(
        self,
        conn: psycopg.Connection[Any],
        filename: str,
        script: str,
        statements: list[Statement],
        finish: Callable[[int], AppliedMigration],
        started: float,
        watch: BlockerWatch,
    ) -> AppliedMigration:
        phase = "statements"
        try:
            with conn.transaction():
                for st in statements:
                    self._execute(conn, filename, st, watch, transactional=True)
                phase = "tracking"
                duration_ms = _ms(time.monotonic() - started)
                conn.execute(_RESET_ROLE)
                watch.start_statement()
                try:
                    record = finish(duration_ms)
                finally:
                    watch.end_statement()
                phase = "COMMIT"
            return record
        except MigrationFailedError:
            raise
        except psycopg.Error as e:  # the tracking write or the COMMIT itself failed
            last_line = script.count("\n") + 1
            note = None
            if phase == "COMMIT" and (conn.closed or e.sqlstate is None):
                note = (
                    "the connection failed while committing: the outcome is UNKNOWN. Look at "
                    "public.schema_migrations: if the migration is "
                    "recorded it was applied (applying it again adopts it); if not, nothing of it was applied"
                )
            statement = (
                "COMMIT" if phase == "COMMIT" else "(recording the migration in public.schema_migrations)"
            )
            raise _failed(filename, statement, last_line, e, transactional=True, note=note) from e

    def _run_autocommit(
        self,
        conn: psycopg.Connection[Any],
        filename: str,
        statements: list[Statement],
        finish: Callable[[int], AppliedMigration],
        started: float,
        done: list[int],
        watch: BlockerWatch,
    ) -> AppliedMigration:
        for st in statements[len(done):]:
            self._execute(conn, filename, st, watch, transactional=False, completed_lines=done)
            done.append(st.line)
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
            raise MigrationsError(
                f"{filename}: the script left a transaction open (a BEGIN without COMMIT); it was rolled "
                "back, so its statements after that BEGIN were undone. The migration is NOT recorded: "
                "end every BEGIN with COMMIT, then apply again."
            )
        try:
            duration_ms = _ms(time.monotonic() - started)
            conn.execute(_RESET_ROLE)
            return finish(duration_ms)
        except psycopg.Error as e:
            raise MigrationsError(
                f"{filename}: all its statements ran (non-transactional), but recording that in "
                f"public.schema_migrations failed: {e}. Check the database; once it matches the file, "
                "applying it again re-runs it (make it re-runnable), or insert its row by hand."
            ) from e

    def _execute(
        self,
        conn: psycopg.Connection[Any],
        filename: str,
        st: Statement,
        watch: BlockerWatch,
        *,
        transactional: bool,
        completed_lines: Sequence[int] = (),
    ) -> None:
        limit = self.limits.statement_timeout_ms
        exempt = bool(limit) and exempt_from_statement_timeout(st) and _statement_timeout(conn) == limit
        if exempt:  # only while the runner's own limit holds: a file's own SET statement_timeout wins
            conn.execute("SET statement_timeout = 0")
        watch.start_statement()
        try:
            # The text is trusted: it is a migration file of this repository, run as written.
            conn.execute(cast(LiteralString, st.text))
        except psycopg.Error as e:
            raise _failed(
                filename, st.text, st, e, transactional=transactional, completed_lines=list(completed_lines)
            ) from e
        finally:
            watch.end_statement()
            if exempt and conn.info.transaction_status in (
                psycopg.pq.TransactionStatus.IDLE, psycopg.pq.TransactionStatus.INTRANS
            ):
                conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(limit)))


def _watch_name(application_name: str) -> str:
    return f"{application_name} (lock watch)"[:63]


def _statement_timeout(conn: psycopg.Connection[Any]) -> int | None:
    """The session's statement_timeout in ms."""
    row = conn.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'statement_timeout'").fetchone()
    return int(row[0]) if row and str(row[0]).isdigit() else None


def _mode(transactional: bool) -> str:
    return "transactional" if transactional else "non-transactional"


def check_order(m: MigrationFile, highest: AppliedMigration | None) -> None:
    """For a migration that is not applied: OutOfOrderMigrationError if `highest` (the applied
    migration with the highest version, see `tracking.highest_of`) has a higher version."""
    if highest is not None and version_number(highest.version) > version_number(m.version):
        raise OutOfOrderMigrationError(
            m.filename, m.version, highest.version, highest_applied_name=highest.name
        )


def check_identity(m: MigrationFile, applied: Mapping[str, AppliedMigration]) -> None:
    """RenamedMigrationError if `m.version` is applied under another name (`applied`: every applied
    migration by version), naming the other version whose checksum `m` has, if any (a swap)."""
    record = applied.get(m.version)
    if record is None or record.name == m.name:
        return
    holder = next((r for r in applied.values() if r.checksum == m.checksum and r.version != m.version), None)
    raise RenamedMigrationError(m.filename, m.version, record.name,
                                holds_version=holder.version if holder else None,
                                holds_name=holder.name if holder else None)


def _same_checksum(m: MigrationFile, record: AppliedMigration) -> None:
    if record.checksum != m.checksum:
        raise ChecksumMismatchError(m.filename, m.version, record.checksum, m.checksum)


def _failed(
    filename: str,
    statement: str,
    where: Statement | int,
    e: psycopg.Error,
    *,
    transactional: bool,
    completed_lines: Sequence[int] = (),
    note: str | None = None,
) -> MigrationFailedError:
    diag = e.diag
    line = where.line_at(diag.statement_position) if isinstance(where, Statement) else where
    message = diag.message_primary or str(e).strip() or type(e).__name__
    hint = diag.message_hint
    if (
        e.sqlstate == "25001" and transactional
    ):  # active_sql_transaction: "cannot run inside a transaction block"
        hint = f"{hint}; {_NOT_IN_TRANSACTION_HINT}" if hint else _NOT_IN_TRANSACTION_HINT
    return MigrationFailedError(
        filename,
        statement,
        line,
        message,
        e.sqlstate,
        transactional=transactional,
        completed_lines=completed_lines,
        pg_detail=diag.message_detail,
        pg_hint=hint,
        pg_context=diag.context,
        note=note,
    )
