"""The limits every migration statement runs under, in `up` and in the rehearsal alike.

A file may set its own (`SET lock_timeout = '1s'`): the limits are set once before the file's first
statement, so the file's own `SET` wins for the statements after it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StatementLimits:
    # How long a statement may wait for a lock before it fails with lock_not_available (55P03).
    lock_timeout_ms: int | None = 5000  # None: the server's (or the role's) setting
    # How long a statement may run; None: the server's setting (backfills may be long).
    statement_timeout_ms: int | None = None


def session_setup(limits: StatementLimits) -> list[str]:
    """The SET statements to run before a file's first statement (session level: they also hold for
    the statements of a `-- migrate:no-transaction` file, each its own transaction)."""
    setup = []
    if limits.lock_timeout_ms is not None:
        setup.append(f"SET lock_timeout = {int(limits.lock_timeout_ms)}")
    if limits.statement_timeout_ms is not None:
        setup.append(f"SET statement_timeout = {int(limits.statement_timeout_ms)}")
    return setup
