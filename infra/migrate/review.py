"""What a migration will do, and what in it is risky: the review a pull request's preview shows.

`review_migration(m)` lists the statements' kinds and objects (`CREATE TABLE audit_log`,
`ALTER TABLE customers ADD COLUMN notes`, `CREATE INDEX ... ON customers`) and the findings of
squawk (https://squawkhq.com, the `squawk-cli` package) on the file, classified as *destructive*
(data or clients can break), *blocking* (takes a lock that stops reads or writes of a busy table)
or *lint* (style; counted, not warned about). squawk decides what is risky; the few cases it has no
rule for (TRUNCATE without CASCADE, DELETE/UPDATE without WHERE, DROP of a kind it does not ban) are
added here, and only where squawk reported nothing for that statement.

The library runs squawk as the runner runs the file: assuming a transaction unless the file says
`-- migrate:no-transaction`, with the squawk configuration the caller names (rule exclusions, the
PostgreSQL version), and knows nothing of where the caller keeps its settings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from .errors import MigrationsError
from .files import MigrationFile
from .statements import Statement, split_statements

# squawk rules about style or robustness, not about what the statement does to a live database.
LINT_RULES = frozenset({
    "prefer-robust-stmts", "prefer-text-field", "prefer-bigint-over-int", "prefer-bigint-over-smallint",
    "prefer-identity", "prefer-timestamptz", "ban-char-field", "require-statement-timeout",
    "require-table-schema", "prefer-big-int", "prefer-timestamp-tz",
})
# squawk rules whose finding means data or clients may break; every other non-lint rule is about
# locks that block a busy table.
DESTRUCTIVE_RULES = frozenset({
    "ban-drop-table", "ban-drop-column", "ban-drop-database", "ban-drop-schema", "ban-drop-function",
    "ban-drop-not-null", "ban-truncate-cascade", "renaming-column", "renaming-table", "changing-column-type",
})

DESTRUCTIVE, BLOCKING, LINT = "destructive", "blocking", "lint"


class SquawkError(MigrationsError):
    """squawk is missing or failed; the message says how to install or what it printed."""


@dataclass(frozen=True)
class Finding:
    line: int  # 1-based line of the file
    action: str  # the statement it is about, described ("DROP TABLE users")
    kind: str  # DESTRUCTIVE, BLOCKING or LINT
    rule: str  # squawk's rule name, or "review:<name>" for the cases squawk has no rule for
    message: str

    def __str__(self) -> str:
        source = self.rule.removeprefix("review:") if self.rule.startswith("review:") else f"squawk {self.rule}"
        return f"{self.kind}: {self.action} (line {self.line}): {self.message} [{source}]"


@dataclass(frozen=True)
class Review:
    filename: str
    actions: list[str]
    findings: list[Finding] = field(default_factory=list)
    # squawk findings a rehearsal of the file disproved, each with what the rehearsal saw instead.
    disproved: list[tuple[Finding, str]] = field(default_factory=list)

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.kind != LINT]

    @property
    def lint(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == LINT]

    def summary(self) -> str:
        return "; ".join(self.actions) if self.actions else "(no schema statement)"


# ------------------------------------------------------------------------------------------ describing

_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_DOLLAR_BODY = re.compile(r"\$(\w*)\$.*?\$\1\$", re.DOTALL)
_STRING = re.compile(r"'(?:[^']|'')*'")
_IDENT = r'(?:"[^"]+"|[\w$]+)(?:\.(?:"[^"]+"|[\w$]+))?'
_OBJECT_KINDS = (
    "MATERIALIZED VIEW", "TABLE", "VIEW", "INDEX", "FUNCTION", "PROCEDURE", "TYPE", "SEQUENCE", "SCHEMA",
    "EXTENSION", "TRIGGER", "DOMAIN", "POLICY", "RULE", "AGGREGATE", "DATABASE", "ROLE", "COLUMN",
)
_KIND = "|".join(k.replace(" ", r"\s+") for k in _OBJECT_KINDS)
_SESSION = {"SET", "RESET", "SELECT", "SHOW", "DO", "CALL", "ANALYZE", "LOCK", "NOTIFY", "DISCARD"}


def _flat(text: str) -> str:
    """The statement on one line, without comments, string literals or function bodies."""
    text = _DOLLAR_BODY.sub("$$…$$", _COMMENTS.sub(" ", text))
    return " ".join(_STRING.sub("'…'", text).split()).rstrip(";").strip()


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _alter_action(action: str) -> str:
    words = action.split()
    upper = [w.upper() for w in words]
    for prefix in (["ADD", "COLUMN", "IF", "NOT", "EXISTS"], ["ADD", "COLUMN"], ["DROP", "COLUMN", "IF", "EXISTS"],
                   ["DROP", "COLUMN"], ["ADD", "CONSTRAINT"], ["DROP", "CONSTRAINT", "IF", "EXISTS"],
                   ["DROP", "CONSTRAINT"], ["ALTER", "COLUMN"], ["RENAME", "COLUMN"], ["RENAME", "CONSTRAINT"],
                   ["RENAME", "TO"], ["OWNER", "TO"]):
        if upper[: len(prefix)] == prefix and len(words) > len(prefix):
            target = words[len(prefix)]
            label = " ".join(p for p in prefix if p not in ("IF", "NOT", "EXISTS"))
            if prefix[0] == "ALTER" and len(words) > 3:
                return f"{label} {target} {_column_change(upper[3:])}"
            if prefix == ["ADD", "CONSTRAINT"] and len(words) > 3:
                return f"{label} {target} {' '.join(upper[3:5] if upper[3] in ('PRIMARY', 'FOREIGN') else upper[3:4])}"
            if prefix[0] == "RENAME" and prefix[1] != "TO" and len(words) > 4:
                return f"{label} {target} TO {words[4]}"
            return f"{label} {target}"
    if upper[:1] in (["ADD"], ["DROP"]) and len(words) > 1 and upper[1] not in ("CONSTRAINT", "COLUMN"):
        if upper[1] in ("PRIMARY", "UNIQUE", "CHECK", "FOREIGN", "EXCLUDE"):
            return " ".join(upper[:3])
        return f"{upper[0]} COLUMN {words[1]}"  # COLUMN is optional in ADD/DROP [COLUMN]
    if upper[:1] == ["ALTER"] and len(words) > 2:
        return f"ALTER COLUMN {words[1]} {_column_change(upper[2:])}"
    return " ".join(upper[:3])


def _column_change(rest: list[str]) -> str:
    """`TYPE bigint`, `SET NOT NULL`, `DROP DEFAULT`, ... of `ALTER COLUMN c <rest>`."""
    if rest[:1] == ["TYPE"] or rest[:3] == ["SET", "DATA", "TYPE"]:
        return " ".join(rest[: rest.index("TYPE") + 2])
    return " ".join(rest[:3] if rest[1:2] == ["NOT"] else rest[:2])


def describe(statement: str) -> str | None:
    """`CREATE TABLE x`, `ALTER TABLE y ADD COLUMN z`, `CREATE INDEX i ON t`, ...; None for session
    statements (SET LOCAL lock_timeout, ...) that change nothing in the schema."""
    flat = _flat(statement)
    if not flat:
        return None
    words = flat.split()
    upper = flat.upper()
    if words[0].upper() in _SESSION:
        return None
    if m := re.match(rf"CREATE\s+(UNIQUE\s+)?INDEX\s+(CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?({_IDENT}\s+)?"
                     rf"ON\s+(?:ONLY\s+)?({_IDENT})", flat, re.IGNORECASE):
        unique, concurrently, name, table = m.groups()
        index = "UNIQUE INDEX" if unique else "INDEX"
        how = " CONCURRENTLY" if concurrently else ""
        return f"CREATE {index}{how} {(name or '').strip() or '(unnamed)'} ON {table}"
    if m := re.match(rf"CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMP(?:ORARY)?\s+|UNLOGGED\s+)?({_KIND})\s+"
                     rf"(?:IF\s+NOT\s+EXISTS\s+)?({_IDENT})", flat, re.IGNORECASE):
        return f"CREATE {' '.join(m[1].upper().split())} {m[2]}"
    if m := re.match(rf"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?({_IDENT})\s+(.*)$", flat, re.IGNORECASE):
        actions = ", ".join(_alter_action(a) for a in _split_top_level(m[2]))
        return f"ALTER TABLE {m[1]} {actions}"
    if m := re.match(rf"DROP\s+({_KIND})\s+(?:CONCURRENTLY\s+)?(?:IF\s+EXISTS\s+)?(.*)$", flat, re.IGNORECASE):
        names = re.sub(r"\s+(CASCADE|RESTRICT)$", r" \1", m[2], flags=re.IGNORECASE)
        return f"DROP {' '.join(m[1].upper().split())} {names}"
    if m := re.match(r"TRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?(.*)$", flat, re.IGNORECASE):
        return f"TRUNCATE {m[1]}"
    if m := re.match(rf"(INSERT\s+INTO|DELETE\s+FROM|UPDATE|COPY)\s+(?:ONLY\s+)?({_IDENT})", flat, re.IGNORECASE):
        verb = " ".join(m[1].upper().split())
        where = "" if verb in ("INSERT INTO", "COPY") or " WHERE " in f" {upper} " else " (every row)"
        return f"{verb} {m[2]}{where}"
    if m := re.match(rf"COMMENT\s+ON\s+({_KIND})\s+({_IDENT})", flat, re.IGNORECASE):
        return f"COMMENT ON {' '.join(m[1].upper().split())} {m[2]}"
    if m := re.match(rf"ALTER\s+({_KIND})\s+(?:IF\s+EXISTS\s+)?({_IDENT})\s+(\w+(?:\s+\w+)?)", flat, re.IGNORECASE):
        return f"ALTER {' '.join(m[1].upper().split())} {m[2]} {m[3].upper()}"
    if words[0].upper() in ("GRANT", "REVOKE"):
        return " ".join(words[:8]) + (" …" if len(words) > 8 else "")
    return " ".join(words[:3]).upper() + (" …" if len(words) > 3 else "")


# ------------------------------------------------------------------------------------------ squawk


def find_squawk() -> str | None:
    """squawk on PATH, or next to this interpreter (a virtualenv's bin/ need not be on PATH)."""
    return shutil.which("squawk") or shutil.which("squawk", path=str(Path(sys.executable).parent))


def squawk_findings(filename: str, sql: str, *, transactional: bool, config: Path | None = None,
                    search_from: Path | None = None, squawk: str | None = None) -> list[dict[str, object]]:
    """squawk's JSON findings on `sql` (lines 0-based, as squawk reports them). Without `config`,
    squawk uses the .squawk.toml it finds from `search_from` upwards (none if not given)."""
    binary = squawk or find_squawk()
    if binary is None:
        raise SquawkError("squawk is not installed: `pip install squawk-cli` (requirements-dev.txt pins it)")
    args = [binary, "--reporter", "json", "--stdin-filepath", filename,
            "--assume-in-transaction" if transactional else "--no-assume-in-transaction"]
    if config is not None:
        args += ["--config", str(config)]
    # Without --config squawk looks for .squawk.toml from its working directory upwards.
    cwd = str(config.parent if config is not None else search_from or os.path.abspath(os.sep))
    result = subprocess.run(args, input=sql, capture_output=True, text=True, cwd=cwd, check=False)
    # Exit status 1 means "found something"; anything else (or no JSON) is squawk failing.
    try:
        findings = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        findings = None
    if result.returncode not in (0, 1) or not isinstance(findings, list):
        raise SquawkError(f"squawk failed on {filename} (exit {result.returncode}): "
                          f"{(result.stderr or result.stdout).strip()[:500]}")
    return findings


# ------------------------------------------------------------------------------------------ review


def _statement_at(statements: list[Statement], line: int) -> Statement | None:
    for st in statements:
        if st.line <= line <= st.end_line:
            return st
    return None


def _own_findings(statement: Statement, action: str, squawked: set[str]) -> Iterable[Finding]:
    """The destructive statements squawk has no rule for (and reported nothing on)."""
    if squawked & (DESTRUCTIVE_RULES | {"require-concurrent-index-deletion"}):
        return
    upper = action.upper()
    if upper.startswith("TRUNCATE"):
        yield Finding(statement.line, action, DESTRUCTIVE, "review:truncate", "deletes every row of the table")
    elif upper.endswith("(EVERY ROW)"):
        verb = "deletes" if upper.startswith("DELETE") else "rewrites"
        yield Finding(statement.line, action, DESTRUCTIVE, "review:no-where", f"{verb} every row (no WHERE)")
    elif upper.startswith("DROP "):
        yield Finding(statement.line, action, DESTRUCTIVE, "review:drop", "drops an object clients may use")


def review_migration(m: MigrationFile, *, squawk_config: Path | None = None, search_from: Path | None = None,
                     squawk: str | None = None) -> Review:
    """What `m` does and its findings. SquawkError if squawk is missing or fails."""
    statements = split_statements(m.up_sql)
    actions = {st.line: describe(st.text) for st in statements}
    raw = squawk_findings(m.filename, m.up_sql, transactional=m.transactional, config=squawk_config,
                          search_from=search_from, squawk=squawk)
    findings: list[Finding] = []
    rules_by_statement: dict[int, set[str]] = {}
    for item in raw:
        line = int(str(item.get("line", 0))) + 1
        statement = _statement_at(statements, line)
        rule = str(item.get("rule_name") or "squawk")
        action = (actions.get(statement.line) if statement else None) or (
            " ".join(statement.text.split()[:3]) if statement else "the file")
        kind = LINT if rule in LINT_RULES else DESTRUCTIVE if rule in DESTRUCTIVE_RULES else BLOCKING
        if statement is not None:
            rules_by_statement.setdefault(statement.line, set()).add(rule)
        message = str(item.get("message", ""))
        findings.append(Finding(statement.line if statement else line, action, kind, rule, message))
    for st in statements:
        if described := actions[st.line]:
            findings.extend(_own_findings(st, described, rules_by_statement.get(st.line, set())))
    findings.sort(key=lambda f: (f.line, f.kind != DESTRUCTIVE, f.rule))
    return Review(m.filename, [a for a in actions.values() if a is not None], findings)


# ------------------------------------------------------------------------------------------ rehearsed


class _Relation(Protocol):
    @property
    def on_target(self) -> bool: ...


class Observed(Protocol):
    """What a rehearsal saw one statement do (`rehearsal.StatementTrace` is one)."""

    @property
    def line(self) -> int: ...
    @property
    def error(self) -> object | None: ...
    @property
    def blocking(self) -> bool: ...
    @property
    def rewrites(self) -> Sequence[_Relation]: ...
    @property
    def lock_timeout(self) -> str | None: ...


# squawk rules that guess a table rewrite; any other blocking rule guesses a lock that stops a busy table.
REWRITE_RULES = frozenset({"changing-column-type"})


def _disproof(finding: Finding, seen: Observed) -> str | None:
    if seen.error is not None:
        return None
    if finding.rule == "require-lock-timeout" and seen.lock_timeout not in (None, "", "0"):
        return f"the statement ran under lock_timeout {seen.lock_timeout}, set by the runner's session limits"
    if finding.rule in REWRITE_RULES:
        if any(r.on_target for r in seen.rewrites):
            return None
        return "the rehearsal saw no rewrite of an existing table or index (the type change is binary-coercible)"
    if finding.kind == BLOCKING and not seen.blocking:
        return ("the rehearsal saw no lock that blocks an existing table (its tables are new, or the lock "
                "is weaker than squawk assumes)")
    return None


def reconcile(review: Review, observed: Sequence[Observed]) -> Review:
    """`review` without the squawk findings that the rehearsal of the same file disproved: a blocking
    finding on a statement that took no blocking lock on an existing table and rewrote none (a table
    the file itself created), a type change that rewrote nothing, a missing lock_timeout where the
    statement ran under one (the session limits `up` sets too). `observed` must come from a
    rehearsal on the target's schema (on an empty database every table is new). What only static
    analysis sees (destructive statements, style) is kept."""
    by_line = {seen.line: seen for seen in observed}
    kept: list[Finding] = []
    disproved = list(review.disproved)
    for finding in review.findings:
        seen = by_line.get(finding.line)
        ours = finding.rule.startswith("review:")
        why = None if seen is None or ours else _disproof(finding, seen)
        if why is None:
            kept.append(finding)
        else:
            disproved.append((finding, why))
    return replace(review, findings=kept, disproved=disproved)
