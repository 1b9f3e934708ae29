"""Splitting a migration script into statements that remember where they are in the file.

Tokens come from sqlparse's lexer, which knows PostgreSQL's quoting: '...', E'...', "...",
dollar-quoted bodies (`$$...$$`, `$tag$...$tag$`), `--` and `/* */` comments; a `;` inside any of them
does not end a statement. Statements end at a `;` outside parentheses, following psql's own rule
(psqlscan.l) for the only SQL-level block PostgreSQL has: the `BEGIN ATOMIC ... END` body of a
`CREATE [OR REPLACE] FUNCTION|PROCEDURE` (inside such a statement BEGIN/CASE open and END closes a
block, and `;` does not split inside a block).

sqlparse's own StatementSplitter is not used: it treats every BEGIN keyword as the start of a block
(a column named `begin`, `BEGIN ISOLATION LEVEL ...`), which silently glues the following statements
together.

Each statement is executed on its own, which is what lets an error point at a line of the file: a
statement keeps the 1-based line of its first significant character, and `Statement.line_at(position)`
turns PostgreSQL's error position (`diag.statement_position`, 1-based characters into the statement
text) into a line of the file. The comments before a statement are not part of its text; the comments
inside it are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlparse import lexer
from sqlparse import tokens as T


@dataclass(frozen=True)
class Statement:
    text: str  # exactly as in the file, from its first significant token through its `;` (if any)
    line: int  # 1-based line of the file where `text` starts

    def line_at(self, position: int | str | None) -> int:
        """Line of the file of the 1-based character `position` inside `text` (PostgreSQL's
        statement_position); the statement's own line when the position is unknown or out of range."""
        try:
            pos = int(position) if position is not None else 0
        except ValueError:
            return self.line
        if pos < 1 or pos > len(self.text) + 1:
            return self.line
        return self.line + self.text.count("\n", 0, pos - 1)

    @property
    def end_line(self) -> int:
        return self.line + self.text.count("\n")


def _insignificant(ttype: object, value: str) -> bool:
    return ttype in T.Comment or not value.strip()


def _words(ttype: object, value: str) -> list[str]:
    """The unquoted words of a keyword/name token ("CREATE OR REPLACE" is one sqlparse token)."""
    if (ttype in T.Keyword or ttype in T.Name) and (value[:1].isalpha() or value[:1] == "_"):
        return value.upper().split()
    return []


def _is_routine_definition(words: list[str]) -> bool:
    """psql's test on the first four words: CREATE [OR REPLACE] FUNCTION|PROCEDURE."""
    if len(words) < 2 or words[0] != "CREATE":
        return False
    if words[1] in ("FUNCTION", "PROCEDURE"):
        return True
    return len(words) >= 4 and words[1:3] == ["OR", "REPLACE"] and words[3] in ("FUNCTION", "PROCEDURE")


def _tokens(sql: str) -> Iterator[tuple[object, str]]:
    yield from lexer.tokenize(sql)


def split_statements(sql: str) -> list[Statement]:
    """The statements of `sql`, in order, each with its starting line. Statements made only of
    comments, whitespace or `;` are dropped."""
    statements: list[Statement] = []
    offset = 0  # of the current token in `sql`
    start: int | None = None  # offset of the current statement's first significant token
    parens = 0
    begin_depth = 0
    first_words: list[str] = []

    def finish(end: int) -> None:
        nonlocal start, parens, begin_depth
        if start is not None:
            text = sql[start:end].rstrip()
            if text.strip(" \t\r\n;"):
                statements.append(Statement(text=text, line=sql.count("\n", 0, start) + 1))
        start, parens, begin_depth = None, 0, 0
        first_words.clear()

    for ttype, value in _tokens(sql):
        if not sql.startswith(value, offset):  # sqlparse's lexer returns the input unchanged
            raise AssertionError("sqlparse's lexer did not return the script as is; cannot locate statements")
        if start is None and not _insignificant(ttype, value):
            start = offset
        offset += len(value)
        if ttype is T.Punctuation:
            if value == "(":
                parens += 1
            elif value == ")":
                parens = max(0, parens - 1)
            elif value == ";" and parens == 0 and begin_depth == 0:
                finish(offset)
            continue
        for word in _words(ttype, value):
            if len(first_words) < 4:
                first_words.append(word)
            if word in ("BEGIN", "CASE") and _is_routine_definition(first_words):
                begin_depth += 1
            elif word == "END" and begin_depth > 0:
                begin_depth -= 1
    if offset != len(sql):
        raise AssertionError("sqlparse's lexer did not return the whole script; cannot locate statements")
    finish(offset)
    return statements


def _leading_words(text: str, count: int) -> list[str]:
    words: list[str] = []
    for ttype, value in _tokens(text):
        if _insignificant(ttype, value):
            continue
        new = _words(ttype, value)
        if not new:
            break
        words.extend(new)
        if len(words) >= count:
            break
    return words[:count]


_TRANSACTION_CONTROL = {"BEGIN", "COMMIT", "END", "ABORT", "ROLLBACK"}


def transaction_control(statement: Statement | str) -> str | None:
    """The transaction-control command a statement is (`BEGIN`, `START TRANSACTION`, `COMMIT`, `END`,
    `ABORT`, `ROLLBACK`, `PREPARE TRANSACTION`), or None. `ROLLBACK TO [SAVEPOINT]`, `SAVEPOINT` and
    `RELEASE` are not: they stay inside the transaction. A BEGIN inside a function or DO body is part
    of that statement, not a statement of its own."""
    words = _leading_words(statement.text if isinstance(statement, Statement) else statement, 2)
    if not words:
        return None
    first, second = words[0], (words[1] if len(words) > 1 else "")
    if first == "START" and second == "TRANSACTION":
        return "START TRANSACTION"
    if first == "PREPARE" and second == "TRANSACTION":
        return "PREPARE TRANSACTION"
    if first == "ROLLBACK" and second == "TO":
        return None
    if first in _TRANSACTION_CONTROL:
        return first
    return None
