"""infra.migrate without a database: file names, validation, checksums, headers, statement splitting."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra.migrate import (
    MigrationFile,
    MigrationFileError,
    checksum_of,
    is_transactional,
    load_migrations,
    next_migration_paths,
    split_statements,
)
from infra.migrate.errors import ChecksumMismatchError, MigrationFailedError, OutOfOrderMigrationError
from infra.migrate.runner import Migrator, check_order
from infra.migrate.statements import Statement, transaction_control
from infra.migrate.tracking import AppliedMigration, highest_of
from tests.helpers import write_files

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------------------------------------- checksum


def test_checksum_is_sha256_of_utf8_bytes() -> None:
    assert checksum_of("") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    text = "SELECT 'é';\n"
    assert checksum_of(text) == "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert checksum_of("SELECT 1;") != checksum_of("SELECT 1; ")


# ---------------------------------------------------------------------------------------------- loading


def test_load_sorted_by_numeric_version_with_fields(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "010_ten.sql": "SELECT 10;\n",
            "002_two.sql": "-- two\nSELECT 2;\n",
            "002_two.down.sql": "SELECT -2;\n",
            "001_create_organizations.sql": "CREATE TABLE organizations (id int);\n",
            "1000_thousand.sql": "SELECT 1000;\n",
            "README.md": "not a migration",
            "notes.txt": "ignored",
        },
    )
    ms = load_migrations(tmp_path)
    assert [m.version for m in ms] == ["001", "002", "010", "1000"]
    first = ms[0]
    assert first == MigrationFile(
        version="001",
        name="create_organizations",
        filename="001_create_organizations.sql",
        up_sql="CREATE TABLE organizations (id int);\n",
        down_sql=None,
        checksum=checksum_of("CREATE TABLE organizations (id int);\n"),
        transactional=True,
    )
    assert ms[1].down_sql == "SELECT -2;\n"
    assert ms[1].down_filename == "002_two.down.sql"
    assert load_migrations(str(tmp_path)) == ms  # str and PathLike both accepted


def test_migration_file_is_frozen_and_picklable(tmp_path: Path) -> None:
    (m,) = load_migrations(write_files(tmp_path, {"001_a.sql": "SELECT 1;"}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.version = "002"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(m)) == m


def test_crlf_and_bom_do_not_change_the_checksum(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "001_x.sql").write_bytes(b"SELECT 1;\nSELECT 2;\n")
    (tmp_path / "b" / "001_x.sql").write_bytes(b"\xef\xbb\xbfSELECT 1;\r\nSELECT 2;\r\n")
    (a,) = load_migrations(tmp_path / "a")
    (b,) = load_migrations(tmp_path / "b")
    assert a.up_sql == b.up_sql == "SELECT 1;\nSELECT 2;\n"
    assert a.checksum == b.checksum


@pytest.mark.parametrize(
    "filename",
    [
        "1_short_version.sql",
        "01_short_version.sql",
        "001-dash.sql",
        "001_CamelCase.sql",
        "001_double__underscore.sql",
        "001_trailing_.sql",
        "001_9starts_with_digit.sql",
        "001_x.up.sql",
        "001.sql",
        "create_table.sql",
        "001_x.SQL",
        "001_x.undo.sql",
    ],
)
def test_bad_file_names_are_rejected_with_the_fix(tmp_path: Path, filename: str) -> None:
    write_files(tmp_path, {"001_ok.sql": "SELECT 1;", filename: "SELECT 1;"})
    with pytest.raises(MigrationFileError) as exc:
        load_migrations(tmp_path)
    message = str(exc.value)
    assert message.startswith(filename + ":")
    assert "NNN_snake_name.sql" in message
    assert "rename" in message


def test_error_is_also_a_value_error(tmp_path: Path) -> None:
    write_files(tmp_path, {"1_bad.sql": "SELECT 1;"})
    with pytest.raises(ValueError):
        load_migrations(tmp_path)


@pytest.mark.parametrize("other", ["001_b.sql", "0001_b.sql"])
def test_duplicate_version(tmp_path: Path, other: str) -> None:
    write_files(tmp_path, {"001_a.sql": "SELECT 1;", other: "SELECT 2;"})
    with pytest.raises(MigrationFileError, match=r"duplicate version") as exc:
        load_migrations(tmp_path)
    message = str(exc.value)
    assert "001_a.sql" in message and other in message
    assert "renumber" in message


def test_orphan_down_file(tmp_path: Path) -> None:
    write_files(tmp_path, {"001_a.sql": "SELECT 1;", "002_b.down.sql": "SELECT 2;"})
    with pytest.raises(MigrationFileError) as exc:
        load_migrations(tmp_path)
    assert str(exc.value).startswith("002_b.down.sql:")
    assert "002_b.sql" in str(exc.value)
    assert "delete it" in str(exc.value)


def test_down_file_with_another_name_than_its_up_file(tmp_path: Path) -> None:
    write_files(tmp_path, {"001_a.sql": "SELECT 1;", "001_b.down.sql": "SELECT 2;"})
    with pytest.raises(MigrationFileError) as exc:
        load_migrations(tmp_path)
    assert str(exc.value).startswith("001_b.down.sql:")
    assert "001_a.sql" in str(exc.value)


@pytest.mark.parametrize("content", ["", "\n\n  \n", "-- only a comment\n", "/* block */\n-- and line\n;\n"])
def test_empty_up_file(tmp_path: Path, content: str) -> None:
    write_files(tmp_path, {"001_a.sql": content})
    with pytest.raises(MigrationFileError) as exc:
        load_migrations(tmp_path)
    assert str(exc.value).startswith("001_a.sql:")
    assert "no SQL statement" in str(exc.value)
    assert "write the migration's SQL, or delete the file" in str(exc.value)


def test_empty_down_file(tmp_path: Path) -> None:
    write_files(tmp_path, {"001_a.sql": "SELECT 1;", "001_a.down.sql": "-- nothing\n"})
    with pytest.raises(MigrationFileError) as exc:
        load_migrations(tmp_path)
    assert str(exc.value).startswith("001_a.down.sql:")
    assert "delete the file if it cannot be reverted" in str(exc.value)


@pytest.mark.parametrize(
    ("statement", "command"),
    [
        ("BEGIN;", "BEGIN"),
        ("begin isolation level serializable;", "BEGIN"),
        ("START TRANSACTION;", "START TRANSACTION"),
        ("COMMIT;", "COMMIT"),
        ("END;", "END"),
        ("ROLLBACK;", "ROLLBACK"),
        ("ABORT;", "ABORT"),
        ("PREPARE TRANSACTION 'x';", "PREPARE TRANSACTION"),
    ],
)
def test_transaction_control_in_a_transactional_file(tmp_path: Path, statement: str, command: str) -> None:
    write_files(tmp_path, {"001_a.sql": f"-- header\nCREATE TABLE a (id int);\n\n{statement}\nSELECT 1;\n"})
    with pytest.raises(MigrationFileError) as exc:
        load_migrations(tmp_path)
    message = str(exc.value)
    assert message.startswith("001_a.sql, line 4: explicit " + command)
    assert "-- migrate:no-transaction" in message


def test_transaction_control_in_a_transactional_down_file(tmp_path: Path) -> None:
    write_files(tmp_path, {"001_a.sql": "SELECT 1;", "001_a.down.sql": "BEGIN;\nSELECT 1;\nCOMMIT;\n"})
    with pytest.raises(MigrationFileError, match=r"^001_a\.down\.sql, line 1: explicit BEGIN"):
        load_migrations(tmp_path)


def test_transaction_control_allowed_where_it_is_not_a_statement(tmp_path: Path) -> None:
    body = """\
CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    RETURN 1;
END
$$;
DO $do$ BEGIN PERFORM 1; END $do$;
CREATE FUNCTION g() RETURNS int LANGUAGE sql
BEGIN ATOMIC
    SELECT 1;
END;
SAVEPOINT s;
ROLLBACK TO SAVEPOINT s;
RELEASE SAVEPOINT s;
SELECT 'BEGIN; COMMIT;';
-- COMMIT;
"""
    write_files(
        tmp_path, {"001_a.sql": body, "002_b.sql": "-- migrate:no-transaction\nBEGIN;\nSELECT 1;\nCOMMIT;\n"}
    )
    ms = load_migrations(tmp_path)
    assert [m.transactional for m in ms] == [True, False]


# ---------------------------------------------------------------------------------------------- header


@pytest.mark.parametrize(
    ("text", "transactional"),
    [
        ("-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);", False),
        ("-- 005: indexes\n--\n-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);", False),
        ("\n\n   -- migrate:no-transaction   \nSELECT 1;", False),
        ("--migrate:no-transaction\nSELECT 1;", False),
        ("SELECT 1;\n-- migrate:no-transaction\n", True),  # not in the leading comment lines
        ("-- header\nSELECT 1;\n-- migrate:no-transaction\n", True),
        ("-- migrate:no-transaction-please\nSELECT 1;", True),
        ("-- we do not want migrate:no-transaction here\nSELECT 1;", True),
        ("SELECT 1;", True),
    ],
)
def test_no_transaction_header(tmp_path: Path, text: str, transactional: bool) -> None:
    assert is_transactional(text) is transactional
    (m,) = load_migrations(write_files(tmp_path, {"001_a.sql": text}))
    assert m.transactional is transactional


def test_down_script_has_its_own_header(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "001_a.sql": "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);",
            "001_a.down.sql": "DROP INDEX i;",
            "002_b.sql": "CREATE TABLE b (id int);",
            "002_b.down.sql": "-- migrate:no-transaction\nDROP TABLE b;",
        },
    )
    a, b = load_migrations(tmp_path)
    assert (a.transactional, a.down_transactional) == (False, True)
    assert (b.transactional, b.down_transactional) == (True, False)


# ---------------------------------------------------------------------------------------------- splitting

SCRIPT = """\
-- 001: header comment; with a semicolon
-- migrate:no-transaction

CREATE TABLE a (
    id   int,
    note text DEFAULT 'semi;colon', -- inline; comment
    q    text DEFAULT E'it\\'s; escaped'
);
/* a block comment;
   over two lines */
CREATE FUNCTION f() RETURNS trigger
LANGUAGE plpgsql
AS $body$
BEGIN
    -- a comment inside the body; with a semicolon
    NEW.note := 'x;y';
    RETURN NEW;
END
$body$;

DO $$ BEGIN PERFORM 1; END $$;  SELECT "odd;name" FROM (SELECT 1 AS "odd;name") s;
SELECT $tag$ $$ ; $$ $tag$ AS nested;
SELECT 100 % 7
;
-- trailing comment; not a statement
"""


def test_split_statements_with_line_numbers() -> None:
    got = [(s.line, s.text.split("\n", 1)[0]) for s in split_statements(SCRIPT)]
    assert got == [
        (4, "CREATE TABLE a ("),
        (11, "CREATE FUNCTION f() RETURNS trigger"),
        (21, "DO $$ BEGIN PERFORM 1; END $$;"),
        (21, 'SELECT "odd;name" FROM (SELECT 1 AS "odd;name") s;'),
        (22, "SELECT $tag$ $$ ; $$ $tag$ AS nested;"),
        (23, "SELECT 100 % 7"),
    ]


def test_statement_texts_are_exact_slices_without_leading_comments() -> None:
    statements = split_statements(SCRIPT)
    lines = SCRIPT.split("\n")
    for st in statements:
        assert st.text == st.text.strip()
        assert not st.text.startswith(("--", "/*"))
        first_line = st.text.split("\n", 1)[0]
        assert first_line in lines[st.line - 1]
        assert st.text in SCRIPT
    create_table, function = statements[0], statements[1]
    assert create_table.text.endswith(");")
    assert "'semi;colon', -- inline; comment" in create_table.text
    assert create_table.end_line == 8
    assert function.text.endswith("$body$;")
    assert "NEW.note := 'x;y';" in function.text
    assert function.end_line == 19
    assert statements[-1].text == "SELECT 100 % 7\n;"


def test_split_without_trailing_semicolon_and_empty_statements() -> None:
    assert split_statements(";;\n  ;\n") == []
    assert split_statements("") == []
    assert split_statements("SELECT 1;;\n\nSELECT 2") == [Statement("SELECT 1;", 1), Statement("SELECT 2", 3)]


def test_split_keeps_begin_atomic_bodies_and_ignores_other_begin_words() -> None:
    script = """\
CREATE TABLE periods (begin date, "end" date);
SELECT begin FROM periods;
CREATE OR REPLACE FUNCTION f(x int) RETURNS int LANGUAGE sql
BEGIN ATOMIC
    SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END;
    SELECT 2;
END;
create procedure p() language sql begin atomic insert into periods values (now(), now()); end;
CREATE FUNCTION g() RETURNS int LANGUAGE sql RETURN CASE WHEN true THEN 1 END;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT 3;
COMMIT;
"""
    got = [(s.line, s.text.split("\n", 1)[0]) for s in split_statements(script)]
    assert got == [
        (1, 'CREATE TABLE periods (begin date, "end" date);'),
        (2, "SELECT begin FROM periods;"),
        (3, "CREATE OR REPLACE FUNCTION f(x int) RETURNS int LANGUAGE sql"),
        (8, "create procedure p() language sql begin atomic insert into periods values (now(), now()); end;"),
        (9, "CREATE FUNCTION g() RETURNS int LANGUAGE sql RETURN CASE WHEN true THEN 1 END;"),
        (10, "BEGIN ISOLATION LEVEL SERIALIZABLE;"),
        (11, "SELECT 3;"),
        (12, "COMMIT;"),
    ]
    assert split_statements(script)[2].text.endswith("SELECT 2;\nEND;")


def test_line_at_maps_a_statement_position_to_a_file_line() -> None:
    st = Statement(text="CREATE TABLE t (\n    id int,\n    x textt\n);", line=10)
    position = st.text.index("textt") + 1  # PostgreSQL positions are 1-based characters
    assert st.line_at(position) == 12
    assert st.line_at(str(position)) == 12  # psycopg's Diagnostic gives it as a string
    assert st.line_at(1) == 10
    assert st.line_at(None) == 10
    assert st.line_at(0) == 10
    assert st.line_at(10_000) == 10
    assert st.line_at("garbage") == 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("BEGIN;", "BEGIN"),
        ("  commit work;", "COMMIT"),
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE;", "START TRANSACTION"),
        ("ROLLBACK TO s;", None),
        ("ROLLBACK AND CHAIN;", "ROLLBACK"),
        ("START something;", None),
        ("SELECT 'BEGIN';", None),
        ("DO $$ BEGIN END $$;", None),
        ("-- BEGIN;\nSELECT 1;", None),
        ("", None),
    ],
)
def test_transaction_control(text: str, expected: str | None) -> None:
    assert transaction_control(text) == expected


# ---------------------------------------------------------------------------------------------- new files


def test_next_migration_paths(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert next_migration_paths(missing, "create_organizations") == (
        missing / "001_create_organizations.sql",
        missing / "001_create_organizations.down.sql",
    )
    assert not missing.exists()  # creates nothing
    write_files(
        tmp_path,
        {"001_a.sql": "SELECT 1;", "007_b.sql": "SELECT 1;", "007_b.down.sql": "SELECT 1;", "README.md": ""},
    )
    up, down = next_migration_paths(tmp_path, "add_segments")
    assert (up.name, down.name) == ("008_add_segments.sql", "008_add_segments.down.sql")
    write_files(tmp_path, {"999_c.sql": "SELECT 1;"})
    assert next_migration_paths(str(tmp_path), "d")[0].name == "1000_d.sql"


@pytest.mark.parametrize("name", ["Add", "add-segments", "add segments", "1st", "", "a__b", "a_", "../x"])
def test_next_migration_paths_rejects_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(MigrationFileError, match="snake_case"):
        next_migration_paths(tmp_path, name)


# ---------------------------------------------------------------------------------------------- errors


def test_error_messages_and_pickling() -> None:
    failed = MigrationFailedError(
        "003_x.sql", "CREATE TABLE t (\n  a int,,\n)" + " x" * 200, 5, 'syntax error at or near ","', "42601"
    )
    text = str(failed)
    assert text.startswith(
        '003_x.sql, line 5: syntax error at or near ","\n  statement: CREATE TABLE t ( a int,, )'
    )
    assert "nothing of it was applied" in text
    statement_line = text.split("\n")[1]
    assert len(statement_line) < 230
    again = pickle.loads(pickle.dumps(failed))
    assert (again.filename, again.line, again.sqlstate, str(again)) == ("003_x.sql", 5, "42601", text)

    partial = MigrationFailedError(
        "004_y.sql", "SELECT x", 9, "boom", "XX000", transactional=False, completed_lines=[2, 4]
    )
    assert "nothing of it was applied" not in str(partial)
    assert "2 statement(s) before it already ran" in str(partial)
    assert "line(s) 2, 4" in str(partial)

    mismatch = ChecksumMismatchError("001_a.sql", "001", "sha256:aaa", "sha256:bbb")
    text = str(mismatch)
    for needle in (
        "001_a.sql (version 001) was changed after it was applied",
        "recorded checksum: sha256:aaa",
        "current checksum:  sha256:bbb",
        "restore the file",
        "git log -p -- '*001_a.sql'",
        "accept the current checksum (a repair",
    ):
        assert needle in text
    assert str(pickle.loads(pickle.dumps(mismatch))) == text
    # The caller words how its user accepts it; the library's facts stay as they are.
    fixed = mismatch.with_fix('add "001" to acceptChecksums')
    assert str(fixed) == text.removesuffix(".") + ': add "001" to acceptChecksums.'
    assert str(mismatch) == text and mismatch.fix is None
    again = pickle.loads(pickle.dumps(fixed))
    assert (type(again), str(again), again.version, again.recorded) == (type(fixed), str(fixed), "001", "sha256:aaa")


def test_the_library_never_names_its_callers_config() -> None:
    # Its callers (the Pulumi program, the CLI) word how to accept a refusal in their own terms.
    library = Path(__file__).resolve().parents[2] / "infra" / "migrate"
    for path in library.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        for needle in ("customer-insights-db", "acceptChecksums", "keepDataOnDestroy", "migrationsDir",
                       "allowOutOfOrder", "pulumi config"):
            assert needle not in text, f"{path.name} names {needle!r}"


# ---------------------------------------------------------------------------------------------- order


def applied(version: str, name: str = "x") -> AppliedMigration:
    return AppliedMigration(version, name, "sha256:0", datetime(2026, 1, 1, tzinfo=UTC), 1, "owner")


def migration(filename: str) -> MigrationFile:
    version, rest = filename.split("_", 1)
    return MigrationFile(version, rest.removesuffix(".sql"), filename, "SELECT 1;\n", None, checksum_of("x"), True)


def test_out_of_order_error_names_the_file_the_versions_and_the_way_out() -> None:
    error = OutOfOrderMigrationError("050_add_notes.sql", "050", "900", highest_applied_name="add_segments")
    text = str(error)
    assert text.startswith(
        "050_add_notes.sql (version 050) is not applied, but a later version already is: 900 (add_segments)."
    )
    for needle in ("before it on a fresh database", "Refused; nothing ran.",
                   "rename it to 901_add_notes.sql", "apply it out of order."):
        assert needle in text, needle
    fixed = error.with_fix("set allowOutOfOrder")
    assert str(fixed).endswith("apply it out of order: set allowOutOfOrder.")
    again = pickle.loads(pickle.dumps(fixed))
    assert (type(again), str(again), again.filename, again.version, again.highest_applied) == (
        OutOfOrderMigrationError, str(fixed), "050_add_notes.sql", "050", "900"
    )
    # The renumbered name keeps the width of the versions, whatever it is.
    assert OutOfOrderMigrationError("0009_a.sql", "0009", "0041").renumbered_filename == "0042_a.sql"
    assert OutOfOrderMigrationError("009_a.sql", "009", "999").renumbered_filename == "1000_a.sql"


def test_check_order_compares_versions_as_numbers() -> None:
    check_order(migration("009_a.sql"), None)  # nothing applied
    check_order(migration("009_a.sql"), applied("008"))
    check_order(migration("1000_a.sql"), applied("999"))  # "1000" < "999" as text, not as a number
    with pytest.raises(OutOfOrderMigrationError) as info:
        check_order(migration("050_a.sql"), applied("0100", "later"))
    assert (info.value.version, info.value.highest_applied, info.value.highest_applied_name) == ("050", "0100", "later")


def test_highest_of_ignores_rows_written_by_hand_with_another_kind_of_version() -> None:
    assert highest_of([]) is None
    records = [applied("002"), applied("0010"), applied("manual"), applied("009")]
    top = highest_of(records)
    assert top is not None and top.version == "0010"


def test_migrator_keeps_the_switch_and_never_shows_the_conninfo() -> None:
    strict = Migrator("postgresql://u:secret-pw@h/db")
    assert strict.allow_out_of_order is False
    lenient = pickle.loads(pickle.dumps(Migrator("postgresql://u:secret-pw@h/db", allow_out_of_order=True)))
    assert lenient.allow_out_of_order is True
    assert "secret-pw" not in repr(lenient) and "allow_out_of_order=True" in repr(lenient)
