"""What a rehearsal reports, from its records alone: the statement lines, the verdict counts and the
JSON line; and the scratch copy's pure parts (which dump entries are pg_cron's, secrets scrubbed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from infra.migrate.rehearsal import (
    Calibration,
    DataCheck,
    LockTaken,
    MigrationTrace,
    Rehearsal,
    RelationSize,
    Rewrite,
    StatementFailure,
    StatementTrace,
    read_only_options,
)
from infra.migrate.scratch import ScratchError, _is_pg_cron_entry, _run_client, _scrub, existing_server

SIZE = RelationSize("public.customers", "table", 18 << 20, 30 << 20, 120_000, "estimate")


def add_column() -> StatementTrace:
    return StatementTrace(
        line=3, summary="ALTER TABLE customers ADD COLUMN notes text DEFAULT ''",
        locks=(LockTaken("ACCESS EXCLUSIVE", "public.customers", "table", True),), sizes=(SIZE,),
        lock_timeout="5s", statement_timeout="0", estimate_ms=0.4, estimate_basis="catalog only",
    )


def test_a_statement_line_names_lock_size_rewrite_estimate_check_and_timeouts() -> None:
    assert add_column().human() == (
        "line 3: ALTER TABLE customers ADD COLUMN notes text DEFAULT '': ACCESS EXCLUSIVE on public.customers "
        "(~120,000 rows, 30 MB); no rewrite; about 1 ms (catalog only); check: none; "
        "lock_timeout 5s, statement_timeout 0"
    )


def test_failed_and_unknown_checks_give_counts_and_reasons() -> None:
    failed = DataCheck("not_null", "public.customers", "segment", "failed", 40)
    unknown = DataCheck("check", "public.customers", "c", "unknown", reason="the read timed out")
    assert failed.describe() == "FAILS: 40 rows of public.customers with segment NULL"
    assert unknown.describe() == "unknown (rows of public.customers violating c): the read timed out"


def test_verdict_counts_failing_blocking_unknown_and_not_rehearsed() -> None:
    rewrite = StatementTrace(
        line=1, summary="ALTER TABLE customers ALTER COLUMN n TYPE bigint",
        rewrites=(Rewrite("public.customers", "table", True),),
        checks=(DataCheck("check", "public.customers", "c", "unknown", reason="timed out"),),
    )
    new_table = StatementTrace(
        line=2, summary="ALTER TABLE tags ADD COLUMN x int",
        locks=(LockTaken("ACCESS EXCLUSIVE", "public.tags", "table", False),),
    )
    failure = StatementFailure("011_b.sql", 4, "SELEC 1", "42601", 'syntax error at or near "SELEC"')
    result = Rehearsal(
        (
            MigrationTrace("010_a.sql", "010", True, True, (add_column(), rewrite, new_table)),
            MigrationTrace("011_b.sql", "011", True, True,
                           (StatementTrace(line=4, summary="SELEC 1", error=failure),), failure),
            MigrationTrace("012_c.sql", "012", True, False, reason="011_b.sql fails before it (up stops there)"),
        ),
        Calibration(10 << 20, 50.0, 1000.0, 150.0, "scratch"),
        True,
    )
    assert (result.failing_files, result.failing_statements, result.blocking_statements, result.unknown_checks,
            result.not_rehearsed) == (1, 1, 2, 1, 1)
    assert not result.ok
    lines = result.lines()
    assert lines[0] == (
        "rehearsal of 3 pending migrations: 1 failing file(s), 1 failing statement(s), 2 blocking statement(s), "
        "1 unknown check(s), 1 not rehearsed"
    )
    assert "010_a.sql (one transaction): passes, 2 blocking statements" in lines
    assert '  line 4: SELEC 1: FAILS: syntax error at or near "SELEC" (SQLSTATE 42601)' in lines
    assert "012_c.sql: not rehearsed: 011_b.sql fails before it (up stops there)" in lines
    assert "ACCESS EXCLUSIVE on public.tags (new: created by a pending file)" in lines[4]
    parsed = json.loads(result.to_json())
    assert "\n" not in result.to_json()
    assert parsed["verdict"]["blocking_statements"] == 2
    assert [m["status"] for m in parsed["migrations"]] == ["passes", "fails", "not rehearsed"]
    assert parsed["migrations"][0]["statements"][0]["text"] == add_column().human()


def test_pg_cron_entries_of_a_schema_dump_are_recognised() -> None:
    cron = [
        "2; 3079 16387 EXTENSION - pg_cron ",
        "3490; 0 0 COMMENT - EXTENSION pg_cron ",
        "3491; 0 0 ACL - SCHEMA cron postgres",
        "3495; 0 0 ACL cron TABLE job postgres",
    ]
    kept = [
        "225; 1259 16514 TABLE public behavior_patterns owner_r",
        "3331; 2606 16458 FK CONSTRAINT public users users_organization_id_fkey owner_r",
        "226; 1259 16543 TABLE public cron owner_r",
        "3493; 0 0 ACL public TABLE customers owner_r",
        ";     dbname: app",
    ]
    assert [line for line in cron + kept if _is_pg_cron_entry(line)] == cron


def test_secrets_are_scrubbed_and_never_shown() -> None:
    conninfo = "host=db port=5432 user=admin password=s3cr3t-value dbname=app"
    text = "could not connect: host=db password=s3cr3t-value; postgresql://admin:s3cr3t-value@db/app failed"
    scrubbed = _scrub(text, conninfo)
    assert "s3cr3t-value" not in scrubbed and "host=db" in scrubbed
    assert "s3cr3t-value" not in repr(existing_server(conninfo))


def test_the_read_session_keeps_the_conninfo_options_and_adds_read_only() -> None:
    assert read_only_options("host=db options='-c search_path=app'") == (
        "-c search_path=app -c default_transaction_read_only=on"
    )
    assert read_only_options("host=db") == "-c default_transaction_read_only=on"


def test_a_pg_dump_older_than_the_server_names_the_fix(tmp_path: Path) -> None:
    fake = tmp_path / "pg_dump"  # prints what pg_dump 15 prints against a 16 server
    fake.write_text(
        "#!/bin/sh\necho 'pg_dump: error: aborting because of server version mismatch' >&2\n"
        "echo 'pg_dump: detail: server version: 16.4; pg_dump version: 15.18' >&2\n"
        "echo \"password=$PGPASSWORD\" >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    env = {**os.environ, "PGPASSWORD": "p4ss-w0rd"}
    with pytest.raises(ScratchError) as raised:
        _run_client([str(fake)], env, 10, "pg_dump of the target's schema", [])
    message = str(raised.value)
    assert "server version mismatch" in message and "server version: 16.4" in message
    assert "older than the target server" in message and "postgresql-client-NN" in message
    assert "p4ss-w0rd" not in message


def test_client_tools_get_the_password_from_a_private_file_not_the_environment(tmp_path, monkeypatch) -> None:
    import os
    import stat

    from psycopg.conninfo import make_conninfo

    from infra.migrate import scratch

    monkeypatch.setenv("PGPASSWORD", "inherited-secret")
    given = make_conninfo(host="h", port=5, dbname="d", user="u", password="p:w\\x")
    conninfo, env = scratch._libpq_env(given, str(tmp_path), "target")
    assert "p:w" not in conninfo and "password" not in conninfo
    assert "PGPASSWORD" not in env and not any("p:w" in v or "inherited-secret" in v for v in env.values())
    passfile = env["PGPASSFILE"]
    assert stat.S_IMODE(os.stat(passfile).st_mode) == 0o600
    with open(passfile) as f:
        assert f.read() == "*:*:*:*:p\\:w\\\\x\n"  # libpq's escapes for ':' and '\'
