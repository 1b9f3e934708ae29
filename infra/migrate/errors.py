"""Exceptions of the migration library.

Every error raised on purpose is a `MigrationsError`; its `str()` is written for the person who has to
fix the problem (which file, which line, what PostgreSQL said, what to do next), so callers (the CLI,
the Pulumi dynamic providers) can show it as is, without a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

STATEMENT_EXCERPT_CHARS = 200


def excerpt(statement: str, limit: int = STATEMENT_EXCERPT_CHARS) -> str:
    """The statement on one line (whitespace runs collapsed), cut to about `limit` characters."""
    flat = " ".join(statement.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


class MigrationsError(Exception):
    """Base class of every error of `infra.migrate`."""


class MigrationFileError(MigrationsError, ValueError):
    """A migration file (or directory, or name) is invalid; the message names the file and the fix."""


class MigrationFailedError(MigrationsError):
    """A statement of a migration (or of its down script) failed in PostgreSQL.

    Attributes: `filename`, `statement` (full text), `line` (1-based line in the file where the error
    is: the start of the statement, refined with PostgreSQL's error position when it reports one),
    `pg_message`, `sqlstate` (None when the error did not come from the server, e.g. a lost connection),
    `transactional`, `completed_lines` (starting lines of the statements of a non-transactional script
    that already ran and stay applied), `pg_detail`, `pg_hint`, `pg_context` and `note`.
    """

    def __init__(
        self,
        filename: str,
        statement: str,
        line: int,
        pg_message: str,
        sqlstate: str | None,
        *,
        transactional: bool = True,
        completed_lines: Sequence[int] = (),
        pg_detail: str | None = None,
        pg_hint: str | None = None,
        pg_context: str | None = None,
        note: str | None = None,
    ) -> None:
        self.filename = filename
        self.statement = statement
        self.line = line
        self.pg_message = pg_message
        self.sqlstate = sqlstate
        self.transactional = transactional
        self.completed_lines = tuple(completed_lines)
        self.pg_detail = pg_detail
        self.pg_hint = pg_hint
        self.pg_context = pg_context
        self.note = note
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [f"{self.filename}, line {self.line}: {self.pg_message}"]
        parts.append(f"  statement: {excerpt(self.statement)}")
        if self.sqlstate:
            parts.append(f"  sqlstate: {self.sqlstate}")
        if self.pg_detail:
            parts.append(f"  detail: {self.pg_detail}")
        if self.pg_hint:
            parts.append(f"  hint: {self.pg_hint}")
        if self.pg_context:
            parts.append(f"  context: {excerpt(self.pg_context, 300)}")
        if self.note:
            parts.append(f"  {self.note}")
        elif self.transactional:
            parts.append(
                "  nothing of it was applied (its transaction was rolled back); fix the file and apply again"
            )
        elif self.completed_lines:
            lines = ", ".join(str(n) for n in self.completed_lines)
            parts.append(
                f"  not transactional (-- migrate:no-transaction): {len(self.completed_lines)} statement(s) "
                f"before it already ran and stay applied (starting at line(s) {lines}); the migration is "
                "NOT recorded. Make those statements re-runnable (IF NOT EXISTS, ...) or undo them by "
                "hand, then apply again"
            )
        else:
            parts.append(
                "  not transactional (-- migrate:no-transaction): it was the first statement, nothing "
                "else ran; the migration is NOT recorded"
            )
        return "\n".join(parts)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite the keyword-only arguments
        return (_rebuild_failed, (self.__dict__.copy(),))


def _rebuild_failed(state: dict[str, object]) -> MigrationFailedError:
    err = MigrationFailedError.__new__(MigrationFailedError)
    err.__dict__.update(state)
    Exception.__init__(err, err._render())
    return err


class ChecksumMismatchError(MigrationsError):
    """An applied migration's file no longer has the checksum recorded when it was applied."""

    def __init__(self, filename: str, version: str, recorded: str, current: str) -> None:
        self.filename = filename
        self.version = version
        self.recorded = recorded
        self.current = current
        super().__init__(filename, version, recorded, current)

    def __str__(self) -> str:
        return (
            f"{self.filename} (version {self.version}) was changed after it was applied:\n"
            f"  recorded checksum: {self.recorded}\n"
            f"  current checksum:  {self.current}\n"
            "Applied migrations must not be edited. Either restore the file to what was applied "
            f"(see its history: git log -p -- '*{self.filename}') and put the change in a new migration; "
            "or, if the edit is harmless (comments, formatting) or the database was changed by hand to "
            "match the file, accept the current checksum (a repair): add "
            f'"{self.version}" to the stack config `customer-insights-db:acceptChecksums` and run `pulumi up` '
            f"(or, in an emergency, `python -m infra.migrate repair {self.version}`). See README."
        )


class LockTimeoutError(MigrationsError):
    """The migration advisory lock could not be acquired in time; names who holds it."""

    def __init__(
        self, message: str, *, holders: Sequence[dict[str, object]] = (), waited: float = 0.0
    ) -> None:
        self.holders = [dict(h) for h in holders]
        self.waited = waited
        super().__init__(message)
