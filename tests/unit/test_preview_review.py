"""The migration review (statement descriptions, squawk classification) and the PR comment's verdicts.

squawk itself runs here (the real binary from squawk-cli): it is a fast local tool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.dynamic.migration import Migration
from infra.migrate import MigrationFile, checksum_of
from infra.migrate.review import BLOCKING, DESTRUCTIVE, describe, find_squawk, reconcile, review_migration
from scripts import preview_comment

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("statement", "expected"), [
    ("CREATE TABLE IF NOT EXISTS public.audit_log (id int, CONSTRAINT p PRIMARY KEY (id));",
     "CREATE TABLE public.audit_log"),
    ("create unique index concurrently if not exists u_idx on only users (lower(email));",
     "CREATE UNIQUE INDEX CONCURRENTLY u_idx ON users"),
    ("ALTER TABLE customers ADD COLUMN notes text DEFAULT 'a,b', ALTER COLUMN name TYPE varchar(300),\n"
     "  DROP CONSTRAINT c_chk, ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES x (id) NOT VALID;",
     "ALTER TABLE customers ADD COLUMN notes, ALTER COLUMN name TYPE VARCHAR(300), DROP CONSTRAINT c_chk, "
     "ADD CONSTRAINT fk FOREIGN KEY"),
    ("ALTER TABLE users ALTER COLUMN email SET NOT NULL;", "ALTER TABLE users ALTER COLUMN email SET NOT NULL"),
    ("ALTER TABLE users RENAME COLUMN a TO b;", "ALTER TABLE users RENAME COLUMN a TO b"),
    ("DROP TABLE IF EXISTS a, b CASCADE;", "DROP TABLE a, b CASCADE"),
    ("DROP INDEX CONCURRENTLY users_email_idx;", "DROP INDEX users_email_idx"),
    ("TRUNCATE TABLE refresh_tokens;", "TRUNCATE refresh_tokens"),
    ("DELETE FROM refresh_tokens;", "DELETE FROM refresh_tokens (every row)"),
    ("DELETE FROM refresh_tokens WHERE expires_at < now();", "DELETE FROM refresh_tokens"),
    ("CREATE OR REPLACE FUNCTION f() RETURNS trigger AS $$ BEGIN DROP TABLE x; END $$ LANGUAGE plpgsql;",
     "CREATE FUNCTION f"),
    ("-- why\nCOMMENT ON TABLE users IS 'people; with a semicolon';", "COMMENT ON TABLE users"),
    ("SET LOCAL lock_timeout = '5s';", None),
])
def test_describe(statement: str, expected: str | None) -> None:
    assert describe(statement) == expected


def migration(sql: str, *, transactional: bool = True) -> MigrationFile:
    return MigrationFile("900", "x", "900_x.sql", sql, None, checksum_of(sql), transactional)


def test_squawk_is_installed() -> None:
    assert find_squawk(), "squawk-cli is in requirements-dev.txt: the review depends on it"


def test_review_uses_squawk_and_adds_only_what_squawk_has_no_rule_for() -> None:
    review = review_migration(migration(
        "SET LOCAL lock_timeout = '5s';\n"
        "CREATE INDEX users_name_idx ON users (name);\n"
        "ALTER TABLE users DROP COLUMN legacy;\n"
        "TRUNCATE sessions;\n"
        "TRUNCATE audit CASCADE;\n"
        "CREATE TABLE fresh (id bigint PRIMARY KEY);\n"
        "CREATE INDEX fresh_idx ON fresh (id);\n"
    ), squawk_config=REPO / ".squawk.toml")
    found = {(f.kind, f.line, f.rule) for f in review.warnings}
    assert found == {
        (BLOCKING, 2, "require-concurrent-index-creation"),
        (DESTRUCTIVE, 3, "ban-drop-column"),
        (DESTRUCTIVE, 4, "review:truncate"),  # squawk only bans TRUNCATE ... CASCADE
        (DESTRUCTIVE, 5, "ban-truncate-cascade"),  # squawk's finding, not a duplicate of ours
    }  # no warning on the index of a table created in the same file (squawk knows it is empty)


def test_review_assumes_a_transaction_only_when_the_runner_opens_one() -> None:
    # A file that fails half-way leaves its first statements applied only without the transaction.
    sql = "CREATE TABLE fresh (id bigint PRIMARY KEY);\nCREATE TABLE other (id bigint PRIMARY KEY);\n"
    in_tx = {f.rule for f in review_migration(migration(sql, transactional=True)).findings}
    no_tx = {f.rule for f in review_migration(migration(sql, transactional=False)).findings}
    assert "prefer-robust-stmts" not in in_tx
    assert "prefer-robust-stmts" in no_tx


def test_applied_migrations_of_the_repository_have_no_warning() -> None:
    from infra.migrate import load_migrations

    for m in load_migrations(REPO / "sql"):
        assert review_migration(m, search_from=REPO / "sql").warnings == [], m.filename


def test_comment_knows_the_migration_type() -> None:
    assert f"pulumi-python:{Migration._resource_type_name}" == preview_comment.MIGRATION_TYPE


URN = "urn:pulumi:s::p::customer-insights:db:Migrations$pulumi-python:dynamic/db:Migration::{}"
OTHER = "urn:pulumi:s::p::postgresql:index/grant:Grant::{}"


def test_verdicts() -> None:
    render = preview_comment.render
    assert "✅ No changes." in render({"steps": [], "changeSummary": {"same": 3}})
    clean = {"steps": [{"op": "create", "urn": URN.format("009_a")}],
             "diagnostics": [{"urn": URN.format("009_a"), "severity": "info", "message": "will run: CREATE TABLE a\n"}]}
    assert "**✅ 1 migration will run; nothing destructive or blocking found.**" in render(clean)
    reverted = {"steps": [{"op": "delete", "urn": URN.format("009_a")},
                          {"op": "replace", "urn": OTHER.format("g")},
                          {"op": "create-replacement", "urn": OTHER.format("g")}]}
    text = render(reverted)
    assert "an applied migration file was removed (`pulumi up` refuses it), 1 resource replaced or deleted" in text
    assert "**`009_a`**: its file left `sql/` while applied; `pulumi up` will **refuse**" in text
    failed = {"steps": [], "diagnostics": [{"severity": "error", "message": "error: 003 was changed\n"}]}
    assert "**❌ The preview failed: 003 was changed**" in render(failed)


def test_workflows_pin_the_cli_of_versions_env_and_find_the_comment_by_its_marker() -> None:
    from devsupport.versions import toolchain_pins

    cli = toolchain_pins()["PULUMI_CLI_VERSION"]
    for name in ("pulumi-preview.yml", "pulumi-up.yml"):
        text = (REPO / ".github" / "workflows" / name).read_text()
        assert f'pulumi-version: "{cli}"' in text, name
        assert "uses: pulumi/actions@v6" in text and "secrets.PULUMI_CONFIG_PASSPHRASE" in text, name
    preview = (REPO / ".github" / "workflows" / "pulumi-preview.yml").read_text()
    assert f"marker='{preview_comment.COMMENT_MARKER}'" in preview
    assert preview_comment.render({"steps": []}).rstrip().endswith(preview_comment.COMMENT_MARKER)


# ------------------------------------------------------------------------------------------ the rehearsal


@dataclass(frozen=True)
class Seen:
    """What a rehearsal saw one statement do (the fields `reconcile` reads of a StatementTrace)."""

    line: int
    blocking: bool = False
    rewrites: tuple[Any, ...] = ()
    error: object | None = None
    lock_timeout: str | None = None


@dataclass(frozen=True)
class Rewritten:
    on_target: bool


def test_rehearsal_disproves_squawk_only_where_it_saw_otherwise() -> None:
    review = review_migration(migration(
        "ALTER TABLE customer_interactions ALTER COLUMN channel TYPE text;\n"
        "ALTER TABLE customers ALTER COLUMN interaction_count TYPE bigint;\n"
        "CREATE INDEX customers_name_idx ON customers (name);\n"
        "CREATE INDEX orders_name_idx ON orders (name);\n"
        "ALTER TABLE users DROP COLUMN legacy;\n"
    ), squawk_config=REPO / ".squawk.toml")
    assert {(f.line, f.rule) for f in review.warnings} >= {
        (1, "changing-column-type"), (2, "changing-column-type"), (3, "require-concurrent-index-creation"),
        (4, "require-concurrent-index-creation"), (5, "ban-drop-column")}
    seen = [Seen(1, blocking=True), Seen(2, blocking=True, rewrites=(Rewritten(True),)), Seen(3, blocking=True),
            Seen(4, blocking=False), Seen(5, blocking=True)]
    reconciled = reconcile(review, seen)
    kept = {(f.line, f.rule) for f in reconciled.warnings}
    assert (1, "changing-column-type") not in kept  # no rewrite: binary-coercible
    assert {(2, "changing-column-type"), (3, "require-concurrent-index-creation"), (5, "ban-drop-column")} <= kept
    assert (4, "require-concurrent-index-creation") not in kept  # no blocking lock on an existing table
    assert {(f.line, f.rule) for f, _ in reconciled.disproved} == {
        (1, "changing-column-type"), (4, "require-concurrent-index-creation")}
    # squawk's "missing lock_timeout" is disproved where the statement ran under one (the session limits).
    timed = review_migration(migration("ALTER TABLE customers ADD COLUMN note text;\n"))
    assert [f.rule for f in timed.warnings] == ["require-lock-timeout"]
    assert reconcile(timed, [Seen(1, blocking=True, lock_timeout="2s")]).warnings == []
    assert [f.rule for f in reconcile(timed, [Seen(1, blocking=True, lock_timeout="0")]).warnings] == [
        "require-lock-timeout"]
    # A statement that failed in the rehearsal disproves nothing; a statement not rehearsed neither.
    assert reconcile(review, [Seen(1, error="boom"), Seen(4, error="boom")]).warnings == review.warnings
    assert reconcile(review, []).warnings == review.warnings


def rehearsal_line(statements: list[dict[str, Any]], status: str) -> str:
    migration = {"filename": "010_a.sql", "rehearsed": True, "status": status, "transactional": True,
                 "error": None, "statements": statements}
    return "rehearsal-json: " + json.dumps({"migration": migration, "calibration": None, "target_read": True})


def test_comment_counts_blocking_statements_once_and_failing_ones_from_the_rehearsal() -> None:
    lock = {"mode": "ACCESS EXCLUSIVE", "relation": "public.organizations", "kind": "table", "on_target": True}
    blocking = {"line": 1, "summary": "ALTER TABLE organizations ADD COLUMN plan text NOT NULL DEFAULT 'x'",
                "locks": [lock], "rewrites": [], "sizes": [], "checks": [], "blocking": True, "failing": False,
                "estimate_ms": 3.2, "lock_timeout": "5s", "statement_timeout": "0"}
    urn = URN.format("010_a")
    diagnostics = [
        {"urn": urn, "severity": "info", "message": "will run: ALTER TABLE organizations ADD COLUMN plan"},
        # squawk's warning on the same statement the rehearsal counts: one blocking statement, not two.
        {"urn": urn, "severity": "warning",
         "message": "blocking: ALTER TABLE organizations ADD COLUMN plan (line 1): Missing `set lock_timeout` "
                    "[squawk require-lock-timeout]"},
        {"urn": urn, "severity": "warning", "message": "rehearsal: line 1: ALTER TABLE organizations ..."},
        {"urn": urn, "severity": "info", "message": rehearsal_line([blocking], "passes")},
    ]
    text = preview_comment.render({"steps": [{"op": "create", "urn": urn}], "diagnostics": diagnostics})
    assert ("**⚠️ Review needed: 1 migration will run (rehearsed: 1 of 1, 0 failing statements); "
            "1 blocking statement.**") in text
    assert ("  | 1 | `ALTER TABLE organizations ADD COLUMN plan text NOT NULL DEFAULT 'x'` | 🔒 ACCESS EXCLUSIVE | "
            "public.organizations | no | 3 ms | - |") in text
    assert "rehearsal: line 1" not in text  # the table carries the rehearsal's own lines

    check = {"check": "rows", "relation": "public.organizations", "subject": "plan", "status": "failed", "count": 2000}
    failed = {**blocking, "checks": [check], "failing": True}
    diagnostics[-1] = {"urn": urn, "severity": "info", "message": rehearsal_line([failed], "fails")}
    diagnostics.append({"urn": urn, "severity": "error", "message": "010_a.sql, line 1: ... FAILS: 2,000 rows"})
    diagnostics.append({"severity": "error", "message": "The rehearsal of the pending migrations failed"})
    text = preview_comment.render({"steps": [{"op": "create", "urn": urn}], "diagnostics": diagnostics})
    assert "**❌ The rehearsal failed: 1 failing statement, 1 blocking statement; nothing was applied.**" in text
    assert "❌ FAILS: 2,000 rows (rows public.organizations.plan)" in text
    assert "- The rehearsal of the pending migrations failed" in text and "- 010_a.sql, line 1" not in text
