"""The limits every migration statement runs under, in `up` and in the rehearsal alike.

A file may set its own (`SET lock_timeout = '1s'`): the limits are set once before the file's first
statement, so the file's own `SET` wins for the statements after it.

A statement that waits longer than the lock timeout fails with lock_not_available (55P03); the
runner then tries the file again (`retry_delays`), so a migration queued behind a long transaction
holds up the application's queries for at most one lock timeout at a time, never as long as the
blocker lives. `CREATE INDEX CONCURRENTLY`, `REINDEX ... CONCURRENTLY`, `DROP INDEX CONCURRENTLY`,
`DETACH PARTITION ... CONCURRENTLY` and `VALIDATE CONSTRAINT` take no lock that stops reads or writes
and may run for as long as the table is large: the statement timeout does not apply to them
(`exempt_from_statement_timeout`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from itertools import pairwise
from typing import Any

from sqlparse import lexer
from sqlparse import tokens as T

from .statements import Statement

# Every connection's bound on reaching the server (unless the conninfo or PGCONNECT_TIMEOUT says
# otherwise): a server that is up answers within a second even across a slow link, so after 10 s an
# unreachable host (a firewall dropping packets) fails the run instead of hanging it.
CONNECT_TIMEOUT = 10  # seconds

LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE lock_not_available: lock_timeout expired (or NOWAIT)


@dataclass(frozen=True)
class StatementLimits:
    # How long a statement may wait for a lock before it fails with lock_not_available (55P03).
    lock_timeout_ms: int | None = 5000  # None: the server's (or the role's) setting; 0: no limit
    # How long a statement may run; None: the server's setting (backfills may be long); 0: no limit.
    statement_timeout_ms: int | None = None
    # How often a file is tried again after a statement failed with lock_not_available.
    lock_retries: int = 4
    # The wait before the first retry; each further wait doubles, up to retry_delay_max_ms.
    retry_delay_ms: int = 1000
    retry_delay_max_ms: int = 30000

    def __post_init__(self) -> None:
        for name in ("lock_timeout_ms", "statement_timeout_ms"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"StatementLimits.{name} must be None or a whole number of ms >= 0, not {value!r}")
        for name in ("lock_retries", "retry_delay_ms", "retry_delay_max_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"StatementLimits.{name} must be a whole number >= 0, not {value!r}")

    @property
    def attempts(self) -> int:
        return self.lock_retries + 1

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> StatementLimits:
        """The limits of `to_dict()`; keys it does not know are ignored, missing ones take the defaults
        (limits recorded by an older version keep working)."""
        known = {f.name for f in fields(cls)}
        given: dict[str, Any] = {k: (None if v is None else int(v)) for k, v in (values or {}).items() if k in known}
        return cls(**given)


def session_setup(limits: StatementLimits) -> list[str]:
    """The SET statements to run before a file's first statement (session level: they also hold for
    the statements of a `-- migrate:no-transaction` file, each its own transaction)."""
    setup = []
    if limits.lock_timeout_ms is not None:
        setup.append(f"SET lock_timeout = {int(limits.lock_timeout_ms)}")
    if limits.statement_timeout_ms is not None:
        setup.append(f"SET statement_timeout = {int(limits.statement_timeout_ms)}")
    return setup


def retry_delays(limits: StatementLimits) -> list[float]:
    """The waits (seconds) before each retry: retry_delay_ms, doubling, capped at retry_delay_max_ms."""
    delays = []
    delay = limits.retry_delay_ms
    for _ in range(limits.lock_retries):
        delays.append(min(delay, limits.retry_delay_max_ms) / 1000)
        delay *= 2
    return delays


def _keywords(text: str) -> list[str]:
    """The statement's unquoted words in order: comments, string and dollar-quoted bodies and quoted
    identifiers are left out, so `VALIDATE CONSTRAINT` inside a function body does not count."""
    words: list[str] = []
    for ttype, value in lexer.tokenize(text):
        if ttype in T.Comment or ttype in T.String or ttype in T.Literal:
            continue
        if (ttype in T.Keyword or ttype in T.Name) and (value[:1].isalpha() or value[:1] == "_"):
            words.extend(value.upper().split())
    return words


def exempt_from_statement_timeout(statement: Statement | str) -> bool:
    """True for a `... CONCURRENTLY` index or partition statement and for `ALTER TABLE ... VALIDATE
    CONSTRAINT`: they run without the statement timeout (they hold no lock that stops the
    application, and their duration grows with the table)."""
    words = _keywords(statement.text if isinstance(statement, Statement) else statement)
    if not words:
        return False
    if words[0] in ("CREATE", "DROP"):  # CREATE [UNIQUE] INDEX CONCURRENTLY, DROP INDEX CONCURRENTLY
        at = words.index("INDEX") if "INDEX" in words[1:3] else -1
        return at > 0 and words[at + 1:at + 2] == ["CONCURRENTLY"]
    if words[0] == "REINDEX":  # REINDEX [(options)] INDEX|TABLE|SCHEMA|DATABASE CONCURRENTLY name
        return "CONCURRENTLY" in words[1:]
    if words[0] != "ALTER":
        return False
    if "DETACH" in words and words[-1] == "CONCURRENTLY":
        return True
    return any(a == "VALIDATE" and b == "CONSTRAINT" for a, b in pairwise(words))


def concurrent_index_name(statement: Statement | str) -> str | None:
    """The name, as written (possibly schema-qualified or quoted), of the index a `CREATE [UNIQUE]
    INDEX CONCURRENTLY [IF NOT EXISTS] name ON ...` statement builds; None for any other statement
    and for an unnamed index."""
    text = statement.text if isinstance(statement, Statement) else statement
    tokens = [(t, v) for t, v in lexer.tokenize(text) if t not in T.Comment and v.strip()]
    words = [v.upper() if t in T.Keyword or t in T.Name else "" for t, v in tokens]
    i = 0
    if words[i:i + 1] != ["CREATE"]:
        return None
    i += 1
    if words[i:i + 1] == ["UNIQUE"]:
        i += 1
    if words[i:i + 2] != ["INDEX", "CONCURRENTLY"]:
        return None
    i += 2
    # sqlparse reads "IF NOT EXISTS" as one to three tokens depending on spacing.
    while i < len(tokens) and words[i] in ("IF", "NOT", "EXISTS", "IF NOT", "NOT EXISTS", "IF NOT EXISTS"):
        i += 1
    name = []
    while i < len(tokens) and words[i] != "ON":
        name.append(tokens[i][1])
        i += 1
    return "".join(name) or None if i < len(tokens) else None
