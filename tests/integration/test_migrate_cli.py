"""`python -m infra.migrations_cli` through subprocess, against a real PostgreSQL (DATABASE_URL)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from infra.migrate import MigrationFileError, load_migrations
from tests.helpers import write_files

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def cli(
    *args: str, database_url: str | None = None, cwd: Path = REPO, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PYTHONPATH"] = str(REPO)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "infra.migrations_cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn(*args: str, database_url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DATABASE_URL": database_url}
    return subprocess.Popen(
        [sys.executable, "-m", "infra.migrations_cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def status_rows(output: str) -> dict[str, list[str]]:
    """version -> the other cells of `status`' table."""
    rows: dict[str, list[str]] = {}
    for line in output.splitlines()[1:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return rows


def tracked(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return []
        return [r[0] for r in conn.execute("SELECT version FROM public.schema_migrations ORDER BY version")]


def table_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
        return bool(row and row[0])


MIGRATIONS = {
    "001_create_organizations.sql": "CREATE TABLE organizations (id int PRIMARY KEY);\n",
    "001_create_organizations.down.sql": "DROP TABLE organizations;\n",
    "002_create_users.sql": "CREATE TABLE users (id int PRIMARY KEY);\n",
    "002_create_users.down.sql": "DROP TABLE users;\n",
}


def test_status_up_status(fresh_db: str, tmp_path: Path) -> None:
    write_files(tmp_path, MIGRATIONS)
    before = cli("status", "--dir", str(tmp_path), database_url=fresh_db)
    assert before.returncode == 0, before.stderr
    assert before.stdout.splitlines()[0].split() == ["version", "name", "status", "applied_at", "duration"]
    assert status_rows(before.stdout) == {
        "001": ["create_organizations", "pending"],
        "002": ["create_users", "pending"],
    }
    assert "2 pending" in before.stdout
    assert tracked(fresh_db) == []  # status created nothing

    up = cli("--dir", str(tmp_path), "up", database_url=fresh_db)
    assert up.returncode == 0, up.stderr
    lines = up.stdout.splitlines()
    assert lines[0] == "001_create_organizations.sql: applying (transactional)"
    assert lines[1].startswith("001_create_organizations.sql: applied in ")
    assert lines[-1] == "done: 2 applied, 0 adopted"
    assert tracked(fresh_db) == ["001", "002"]

    after = cli("status", "--dir", str(tmp_path), database_url=fresh_db)
    assert after.returncode == 0, after.stderr
    rows = status_rows(after.stdout)
    assert [cells[:2] for cells in rows.values()] == [
        ["create_organizations", "applied"],
        ["create_users", "applied"],
    ]
    assert all(cells[-1] == "ms" for cells in rows.values())  # "... <duration> ms"
    assert "2 applied" in after.stdout

    again = cli("up", "--dir", str(tmp_path), database_url=fresh_db)
    assert (again.returncode, again.stdout.strip()) == (0, "nothing to apply: every migration is applied")


def test_database_url_option_wins_over_the_environment(fresh_db: str, tmp_path: Path) -> None:
    write_files(tmp_path, MIGRATIONS)
    result = cli(
        "up",
        "--dir",
        str(tmp_path),
        "--database-url",
        fresh_db,
        database_url="host=192.0.2.1 port=1 connect_timeout=1",
    )
    assert result.returncode == 0, result.stderr
    assert tracked(fresh_db) == ["001", "002"]


def test_up_stops_at_the_first_failure_with_a_message_and_no_traceback(fresh_db: str, tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            **MIGRATIONS,
            "003_broken.sql": "CREATE TABLE broken (id int);\n\nSELECT FROM FROM;\n",
            "004_after.sql": "CREATE TABLE after_broken (id int);\n",
        },
    )
    result = cli("up", "--dir", str(tmp_path), database_url=fresh_db)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(
        'error: 003_broken.sql, line 3: syntax error at or near "FROM"\n  statement: SELECT FROM FROM;'
    )
    assert "nothing of it was applied" in result.stderr
    assert result.stderr.endswith("(`python -m infra.migrations_cli status` shows what is recorded.)\n")
    assert tracked(fresh_db) == ["001", "002"]
    assert not table_exists(fresh_db, "broken") and not table_exists(fresh_db, "after_broken")
    status = cli("status", "--dir", str(tmp_path), database_url=fresh_db)
    assert [cells[1] for cells in status_rows(status.stdout).values()] == [
        "applied",
        "applied",
        "pending",
        "pending",
    ]


def test_down_reverts_the_last_applied_migration(fresh_db: str, tmp_path: Path) -> None:
    write_files(tmp_path, MIGRATIONS)
    assert cli("up", "--dir", str(tmp_path), database_url=fresh_db).returncode == 0
    down = cli("down", "--dir", str(tmp_path), database_url=fresh_db)
    assert down.returncode == 0, down.stderr
    assert (
        down.stdout.splitlines()[0]
        == "002_create_users.down.sql: reverting 002_create_users.sql (transactional)"
    )
    assert tracked(fresh_db) == ["001"]
    assert not table_exists(fresh_db, "users") and table_exists(fresh_db, "organizations")
    assert cli("down", "--dir", str(tmp_path), database_url=fresh_db).returncode == 0
    assert tracked(fresh_db) == []
    nothing = cli("down", "--dir", str(tmp_path), database_url=fresh_db)
    assert (nothing.returncode, nothing.stdout.strip()) == (0, "nothing to revert: no migration is applied")


def test_down_without_a_down_script_fails_cleanly(fresh_db: str, tmp_path: Path) -> None:
    write_files(tmp_path, {"001_a.sql": "CREATE TABLE a (id int);\n"})
    assert cli("up", "--dir", str(tmp_path), database_url=fresh_db).returncode == 0
    result = cli("down", "--dir", str(tmp_path), database_url=fresh_db)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "no down script 001_a.down.sql" in result.stderr
    assert tracked(fresh_db) == ["001"]


def test_new_creates_the_next_numbered_pair(tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    first = cli("new", "create_organizations", "--dir", str(directory))  # no database needed
    assert first.returncode == 0, first.stderr
    up, down = directory / "001_create_organizations.sql", directory / "001_create_organizations.down.sql"
    assert first.stdout.splitlines() == [str(up), str(down)]
    assert up.read_text().startswith("-- 001_create_organizations.sql: create organizations\n")
    assert "-- migrate:no-transaction" in up.read_text()  # explained, not active:
    with pytest.raises(MigrationFileError, match="no SQL statement"):  # empty until someone writes the SQL
        load_migrations(directory)
    up.write_text(up.read_text() + "CREATE TABLE organizations (id int);\n")
    down.write_text(down.read_text() + "DROP TABLE organizations;\n")
    (m,) = load_migrations(directory)
    assert m.transactional

    second = cli("new", "add_segments", "--dir", str(directory))
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in directory.iterdir())[-2:] == [
        "002_add_segments.down.sql",
        "002_add_segments.sql",
    ]

    bad = cli("new", "Add-Segments", "--dir", str(directory))
    assert bad.returncode == 2
    assert "snake_case" in bad.stderr
    assert len(list(directory.iterdir())) == 4


def test_changed_file_status_and_repair(fresh_db: str, tmp_path: Path) -> None:
    write_files(tmp_path, MIGRATIONS)
    assert cli("up", "--dir", str(tmp_path), database_url=fresh_db).returncode == 0
    write_files(
        tmp_path,
        {"001_create_organizations.sql": "-- tenants\nCREATE TABLE organizations (id int PRIMARY KEY);\n"},
    )
    write_files(tmp_path, {"003_more.sql": "CREATE TABLE more (id int);\n"})

    status = cli("status", "--dir", str(tmp_path), database_url=fresh_db)
    assert status.returncode == 0
    assert [cells[1] for cells in status_rows(status.stdout).values()] == ["CHANGED", "applied", "pending"]
    assert "repair VERSION" in status.stdout

    up = cli("up", "--dir", str(tmp_path), database_url=fresh_db)
    assert up.returncode == 1
    assert "001_create_organizations.sql (version 001) was changed after it was applied" in up.stderr
    # The library's facts, and how to accept it from this command line (never another caller's config).
    assert "accept the current checksum (a repair: the new checksum is recorded, nothing runs): " \
           "`python -m infra.migrations_cli repair 001`." in up.stderr
    assert "acceptChecksums" not in up.stderr
    assert not table_exists(fresh_db, "more")

    repair = cli("repair", "001", "--dir", str(tmp_path), database_url=fresh_db)
    assert repair.returncode == 0, repair.stderr
    assert "001_create_organizations.sql: repaired: recorded checksum sha256:" in repair.stdout
    status = cli("status", "--dir", str(tmp_path), database_url=fresh_db)
    assert [cells[1] for cells in status_rows(status.stdout).values()] == ["applied", "applied", "pending"]
    assert cli("up", "--dir", str(tmp_path), database_url=fresh_db).returncode == 0
    assert tracked(fresh_db) == ["001", "002", "003"]

    assert cli("repair", "009", "--dir", str(tmp_path), database_url=fresh_db).returncode == 1
    assert cli("repair", "latest", "--dir", str(tmp_path), database_url=fresh_db).returncode == 2


def test_out_of_order_file_status_refusal_and_allow_flag(fresh_db: str, tmp_path: Path) -> None:
    write_files(tmp_path, {**MIGRATIONS, "010_create_events.sql": "CREATE TABLE events (id int);\n"})
    assert cli("up", "--dir", str(tmp_path), database_url=fresh_db).returncode == 0
    write_files(tmp_path, {"003_create_teams.sql": "CREATE TABLE teams (id int);\n"})  # merged late

    status = cli("status", "--dir", str(tmp_path), database_url=fresh_db)
    assert status.returncode == 0
    assert {v: cells[1] for v, cells in status_rows(status.stdout).items()} == {
        "001": "applied", "002": "applied", "003": "OUT-OF-ORDER", "010": "applied"
    }
    assert "up --allow-out-of-order" in status.stdout

    up = cli("up", "--dir", str(tmp_path), database_url=fresh_db)
    assert up.returncode == 1
    assert "Traceback" not in up.stderr
    assert up.stderr.startswith(
        "error: 003_create_teams.sql (version 003) is not applied, but a later version already is: "
        "010 (create_events)."
    )
    assert "rename it to 011_create_teams.sql" in up.stderr
    assert "apply it out of order: `python -m infra.migrations_cli up --allow-out-of-order`." in up.stderr
    assert not table_exists(fresh_db, "teams") and tracked(fresh_db) == ["001", "002", "010"]

    allowed = cli("up", "--allow-out-of-order", "--dir", str(tmp_path), database_url=fresh_db)
    assert allowed.returncode == 0, allowed.stderr
    assert "003_create_teams.sql: applied out of order (after 010), as allowed" in allowed.stdout
    assert tracked(fresh_db) == ["001", "002", "003", "010"]
    assert cli("up", "--dir", str(tmp_path), database_url=fresh_db).returncode == 0  # history now


def test_status_shows_records_without_a_file(fresh_db: str, tmp_path: Path) -> None:
    write_files(tmp_path, MIGRATIONS)
    assert cli("up", "--dir", str(tmp_path), database_url=fresh_db).returncode == 0
    (tmp_path / "002_create_users.sql").unlink()
    (tmp_path / "002_create_users.down.sql").unlink()
    status = cli("status", "--dir", str(tmp_path), database_url=fresh_db)
    assert status.returncode == 0
    assert status_rows(status.stdout)["002"][:2] == ["create_users", "NO"]
    assert "NO FILE" in status.stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    write_files(tmp_path, MIGRATIONS)
    no_database = cli("status", "--dir", str(tmp_path))
    assert no_database.returncode == 2
    assert "DATABASE_URL" in no_database.stderr
    assert cli().returncode == 2
    assert cli("sideways").returncode == 2
    assert cli("new").returncode == 2
    assert cli("--help").returncode == 0


def test_migration_errors_exit_1(tmp_path: Path) -> None:
    write_files(tmp_path, {"1_bad_name.sql": "SELECT 1;"})
    bad_file = cli("status", "--dir", str(tmp_path), database_url="host=127.0.0.1 port=1 connect_timeout=1")
    assert bad_file.returncode == 1
    assert bad_file.stderr.startswith("error: 1_bad_name.sql: not a valid migration file name")
    assert "`python -m infra.migrations_cli new NAME` creates well-named files" in bad_file.stderr
    write_files(tmp_path / "ok", {"001_a.sql": "SELECT 1;"})
    unreachable = cli(
        "status", "--dir", str(tmp_path / "ok"), database_url="host=127.0.0.1 port=1 connect_timeout=2"
    )
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("error: cannot connect to the database")
    assert "Traceback" not in bad_file.stderr + unreachable.stderr


def test_two_concurrent_up_processes_apply_everything_once(fresh_db: str, tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "001_runs.sql": "CREATE TABLE runs (version text PRIMARY KEY);\nSELECT pg_sleep(0.3);\n",
            "002_b.sql": "INSERT INTO runs VALUES ('002');\nSELECT pg_sleep(0.2);\n",
            "003_c.sql": "INSERT INTO runs VALUES ('003');\nSELECT pg_sleep(0.2);\n",
        },
    )
    procs = [spawn("up", "--dir", str(tmp_path), database_url=fresh_db) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert tracked(fresh_db) == ["001", "002", "003"]
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT version FROM runs ORDER BY 1").fetchall() == [("002",), ("003",)]
    applied_lines = [line for out, _ in outputs for line in out.splitlines() if ": applied in " in line]
    assert len(applied_lines) == 3  # each migration ran in exactly one of the two processes
