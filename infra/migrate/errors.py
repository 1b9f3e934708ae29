"""Exceptions of the migration library.

Every error raised on purpose is a `MigrationsError`; its `str()` is written for the person who has to
fix the problem (which file, which line, what PostgreSQL said, what to do next), so callers (a command
line, a deployment tool) can show it as is, without a traceback.
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
        reverts: str | None = None,
    ) -> None:
        self.filename = filename
        self.reverts = reverts
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
        reverts = getattr(self, "reverts", None)
        if self.note:
            parts.append(f"  {self.note}")
        elif reverts and self.transactional:
            parts.append(f"  nothing of it ran (its transaction was rolled back): {reverts} is still applied")
        elif reverts:
            ran = ", ".join(str(n) for n in self.completed_lines)
            parts.append(
                "  not transactional (-- migrate:no-transaction): "
                + (f"the statement(s) starting at line(s) {ran} already ran and stay; " if ran else
                   "it was the first statement, nothing else ran; ")
                + f"{reverts} is still recorded as applied"
                + ("; make them re-runnable (IF EXISTS) before reverting again" if ran else "")
            )
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

    def reverting(self, up_filename: str) -> MigrationFailedError:
        """This failure as one of the down script reverting `up_filename` (which stays applied)."""
        return _rebuild_failed({**self.__dict__, "reverts": up_filename})

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite the keyword-only arguments
        return (_rebuild_failed, (self.__dict__.copy(),))


def _rebuild_failed(state: dict[str, object]) -> MigrationFailedError:
    err = MigrationFailedError.__new__(MigrationFailedError)
    err.__dict__.update(state)
    Exception.__init__(err, err._render())
    return err


class RefusedMigrationError(MigrationsError):
    """A migration the library refuses to run, although its caller may accept it on purpose.

    The library states the facts and the ways out; how a caller's user takes the way that accepts it
    (a config key, a command-line flag) is the caller's to word: it passes that text as `fix`
    (`error.with_fix(text)`), and `str()` ends with it.
    """

    fix: str | None = None

    def with_fix(self, fix: str | None) -> RefusedMigrationError:
        """A copy of this error whose message ends with `fix` (the caller's way to accept it)."""
        copy = self.__class__.__new__(self.__class__)
        copy.__dict__.update(self.__dict__)
        copy.fix = fix
        copy.args = self.args
        return copy

    def _accept(self, what: str) -> str:
        return f"{what}: {self.fix}" if self.fix else what

    def __reduce__(self) -> tuple[Any, ...]:  # picklable with the keyword-only arguments and `fix`
        return (_rebuild, (self.__class__, self.__dict__.copy(), self.args))


def _rebuild(cls: type[RefusedMigrationError], state: dict[str, object], args: tuple[Any, ...]) -> Exception:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    err.args = args
    return err


class ChecksumMismatchError(RefusedMigrationError):
    """An applied migration's file no longer has the checksum recorded when it was applied."""

    def __init__(self, filename: str, version: str, recorded: str, current: str, *, fix: str | None = None) -> None:
        self.filename = filename
        self.version = version
        self.recorded = recorded
        self.current = current
        self.fix = fix
        super().__init__(filename, version, recorded, current)

    def __str__(self) -> str:
        return (
            f"{self.filename} (version {self.version}) was changed after it was applied:\n"
            f"  recorded checksum: {self.recorded}\n"
            f"  current checksum:  {self.current}\n"
            "Applied migrations must not be edited. Either restore the file to what was applied "
            f"(see its history: git log -p -- '*{self.filename}') and put the change in a new migration; "
            "or, if the edit is harmless (comments, formatting) or the database was changed by hand to "
            "match the file, "
            + self._accept("accept the current checksum (a repair: the new checksum is recorded, nothing runs)")
            + "."
        )


class OutOfOrderMigrationError(RefusedMigrationError):
    """A pending migration's version is below the highest applied one (a file added, e.g. by a merged
    branch, after later versions were applied). Applied now, it would run after them here but before
    them on a fresh database; refused unless the caller allows out-of-order migrations."""

    def __init__(
        self,
        filename: str,
        version: str,
        highest_applied: str,
        *,
        highest_applied_name: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.filename = filename
        self.version = version
        self.highest_applied = highest_applied
        self.highest_applied_name = highest_applied_name
        self.fix = fix
        super().__init__(filename, version, highest_applied)

    @property
    def renumbered_filename(self) -> str:
        """The file's name after the highest applied version (same width), e.g. 010_add_notes.sql."""
        name = self.filename.split("_", 1)[1] if "_" in self.filename else self.filename
        number = int(self.highest_applied) + 1 if self.highest_applied.isdigit() else 0
        return f"{number:0{max(len(self.version), len(self.highest_applied))}d}_{name}"

    def __str__(self) -> str:
        later = self.highest_applied + (f" ({self.highest_applied_name})" if self.highest_applied_name else "")
        return (
            f"{self.filename} (version {self.version}) is not applied, but a later version already is: "
            f"{later}. Applied now, it would run after {self.highest_applied} here but before it on a "
            "fresh database, so the two could end with different schemas. Refused; nothing ran.\n"
            f"Either renumber it after {self.highest_applied} (rename it to {self.renumbered_filename}, "
            "and its .down.sql likewise) so it runs last everywhere; or, if it depends on no migration "
            "after it and none depends on it, "
            + self._accept("apply it out of order")
            + "."
        )


class RenamedMigrationError(RefusedMigrationError):
    """A file's version is applied under another name: the file was renamed, or versions were swapped.

    A migration's identity is its version: its record keeps the name it was applied with.
    `holds_version`/`holds_name`: the other applied migration whose checksum this file has, if any
    (two files that swapped numbers).
    """

    def __init__(
        self,
        filename: str,
        version: str,
        applied_name: str,
        *,
        holds_version: str | None = None,
        holds_name: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.filename = filename
        self.version = version
        self.applied_name = applied_name
        self.holds_version = holds_version
        self.holds_name = holds_name
        self.fix = fix
        super().__init__(filename, version, applied_name)

    @property
    def applied_filename(self) -> str:
        return f"{self.version}_{self.applied_name}.sql"

    def __str__(self) -> str:
        head = (f"{self.filename} has version {self.version}, which is applied as {self.applied_filename} "
                "(public.schema_migrations). A migration's identity is its version: ")
        if self.holds_version is not None:
            return (
                head + f"this file holds what was applied as version {self.holds_version} "
                f"({self.holds_version}_{self.holds_name}.sql), so applied migrations were renumbered. "
                "Refused; nothing ran.\nGive the files back their versions (and their .down.sql likewise): "
                "the order they ran in is history; put a change in a new migration."
            )
        return (
            head + "a renamed applied file would be reverted under its old name and applied again under "
            "the new one. Refused; nothing ran.\n"
            f"Rename it back to {self.applied_filename} (and its .down.sql likewise)"
            + (f"; or, to keep the new name, {self.fix}" if self.fix else "") + "."
        )


class LockTimeoutError(MigrationsError):
    """The migration advisory lock could not be acquired in time; names who holds it."""

    def __init__(
        self, message: str, *, holders: Sequence[dict[str, object]] = (), waited: float = 0.0
    ) -> None:
        self.holders = [dict(h) for h in holders]
        self.waited = waited
        super().__init__(message)


class MigrationBlockedError(MigrationFailedError):
    """A statement of a migration could not get its lock (lock_not_available, 55P03) on any attempt:
    another session held a conflicting lock for longer than every wait together.

    Besides `MigrationFailedError`'s attributes: `attempts` (how often the file was tried),
    `waited_s` (from the first try to the last failure), `blockers` (what was seen of the blocking
    sessions at the last attempt, a sentence each, never their query text) and `fix` (the caller's
    words for allowing a longer wait, see `with_fix`).
    """

    fix: str | None = None

    def __init__(self, failed: MigrationFailedError, *, attempts: int, waited_s: float,
                 blockers: Sequence[str], fix: str | None = None) -> None:
        self.attempts = attempts
        self.waited_s = waited_s
        self.blockers = tuple(blockers)
        self.fix = fix
        state = {k: v for k, v in failed.__dict__.items() if k not in ("note",)}
        super().__init__(
            state.pop("filename"), state.pop("statement"), state.pop("line"), state.pop("pg_message"),
            state.pop("sqlstate"), note=self._blocked_note(failed), **state,
        )

    def _blocked_note(self, failed: MigrationFailedError) -> str:
        who = "; ".join(self.blockers) or "a session that was not seen (it ended, or the wait was too short to sample)"
        if failed.transactional:
            kept = "Nothing of the file stays (each attempt was rolled back)"
        elif failed.completed_lines:
            kept = (f"Not transactional: the {len(failed.completed_lines)} statement(s) before it ran and stay "
                    "applied, and applying again runs the file from its start (they must be re-runnable)")
        else:
            kept = "Not transactional: it was the first statement, nothing else ran"
        longer = f"; or {self.fix}" if self.fix else "; or allow a longer wait (a longer lock timeout, more retries)"
        return (
            f"gave up after {self.attempts} attempt(s) over {self.waited_s:.0f} s: the lock it needs is held by "
            f"{who}. {kept}; the migration is NOT recorded. End that session's transaction (commit or roll "
            "back in the application that holds it, or SELECT pg_terminate_backend(<pid>) if it is stuck), "
            f"then apply again{longer}"
        )

    def with_fix(self, fix: str | None) -> MigrationBlockedError:
        """A copy whose message ends with the caller's way to allow a longer wait."""
        copy = MigrationBlockedError.__new__(MigrationBlockedError)
        copy.__dict__.update(self.__dict__)
        copy.fix = fix
        copy.note = copy._blocked_note(copy)
        Exception.__init__(copy, copy._render())
        return copy

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_blocked, (self.__dict__.copy(),))


def _rebuild_blocked(state: dict[str, object]) -> MigrationBlockedError:
    err = MigrationBlockedError.__new__(MigrationBlockedError)
    err.__dict__.update(state)
    Exception.__init__(err, err._render())
    return err
