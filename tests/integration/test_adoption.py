"""Adopting a database another tool built (infra.migrate.adoption, infra.migrate.catalog) on a real server:
a database built by the real knex, and Flyway-, dbmate- and golang-migrate-shaped histories built by SQL."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo as pg_conninfo
from psycopg import sql

from devsupport import knex
from devsupport.local_postgres import LocalPostgres
from infra.dynamic.adoption import scram_verifier
from infra.migrate import Migrator, catalog, load_migrations
from infra.migrate import adoption as adopt
from infra.migrate.scratch import existing_server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FILES = load_migrations(REPO / "sql")
KNEX_PROJECT = REPO / "tests" / "data" / "knex_project"
SPEC = [m for m in FILES if int(m.version) <= 7]  # what the knex team's seven migrations make


def url_of(dsn: str) -> str:
    """The postgresql:// form of a libpq DSN (what node-postgres reads)."""
    p = pg_conninfo.conninfo_to_dict(dsn)
    return f"postgresql://{p['user']}:{p['password']}@{p['host']}:{p['port']}/{p['dbname']}"


def seed(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("""
            WITH org AS (INSERT INTO organizations (name) VALUES ('Acme') RETURNING id),
                 u AS (INSERT INTO users (email, password_hash, first_name, last_name, role, organization_id)
                       SELECT 'ada@example.com', '$2b$10$' || repeat('a', 53), 'Ada', 'L', 'viewer', id
                         FROM org
                       RETURNING id)
            INSERT INTO refresh_tokens (user_id, token, expires_at)
            SELECT id, 'tok', now() + interval '1 day' FROM u""")
        c.execute("""INSERT INTO customers (organization_id, external_id, first_seen_at, last_seen_at)
                     SELECT id, 'c-' || g, now(), now() FROM organizations, generate_series(1, 50) g""")
    return counts(dsn)


def counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as c:
        return {t: c.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]  # type: ignore[index]
                for t in ("organizations", "users", "customers", "refresh_tokens")}


def oids(dsn: str) -> dict[str, int]:
    """Table oids: a table dropped and created again gets a new one."""
    with psycopg.connect(dsn) as c:
        return dict(c.execute("SELECT relname, oid::int FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                              "AND relkind = 'r'").fetchall())


def tracking_rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT version, duration_ms FROM public.schema_migrations ORDER BY version").fetchall()


def has_table(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{name}",)).fetchone() == (True,)


def build_with_sql(dsn: str, files: list[Any]) -> None:
    """The schema as another tool applies the same SQL: the files' text, no tracking of this runner."""
    with psycopg.connect(dsn) as c:
        for m in files:
            with c.transaction():
                c.execute(m.up_sql)


@pytest.fixture
def scratch(local_postgres: LocalPostgres) -> Any:
    return existing_server(local_postgres.address.dsn())


@pytest.fixture(scope="module")
def knex_cli() -> Path:
    try:
        return knex.knex_bin()
    except knex.KnexUnavailable as e:
        pytest.fail(str(e), pytrace=False)


def knex_project(tmp_path: Path, edits: dict[str, tuple[str, str]] | None = None) -> Path:
    project = tmp_path / "knex"
    shutil.copytree(KNEX_PROJECT, project)
    for name, (old, new) in (edits or {}).items():
        path = project / "migrations" / name
        text = path.read_text()
        assert old in text, (name, old)
        path.write_text(text.replace(old, new))
    return project


def test_a_database_built_by_knex_is_adopted_without_running_the_adopted_files(
        knex_cli: Path, fresh_db: str, scratch: Any, tmp_path: Path) -> None:
    out = knex.migrate_latest(knex_project(tmp_path), url_of(fresh_db))
    assert "Batch 1 run: 7 migrations" in out, out
    rows = seed(fresh_db)
    tables = oids(fresh_db)

    plan = adopt.read_plan(fresh_db, FILES, "knex")
    assert [m.version for m in plan.matched] == [m.version for m in SPEC]
    assert [m.version for m in plan.pending] == [m.version for m in FILES if int(m.version) > 7]
    assert adopt.verify(plan, fresh_db, scratch=scratch, owner="postgres") == []
    assert adopt.record(plan, fresh_db) == [m.version for m in SPEC]

    applied = Migrator(fresh_db).apply_all(FILES)  # what `up` then does: only the later files run
    assert [(r.version, adopted) for r, adopted in applied] == [(m.version, False) for m in plan.pending]
    assert [v for v, ms in tracking_rows(fresh_db) if ms == 0] == [m.version for m in SPEC]
    assert counts(fresh_db) == rows
    assert {t: o for t, o in oids(fresh_db).items() if t in tables} == tables  # nothing was recreated
    assert has_table(fresh_db, "knex_migrations") and has_table(fresh_db, "knex_migrations_lock")
    with psycopg.connect(fresh_db, autocommit=True) as c:  # the later files' objects work on the adopted tables
        c.execute("CALL delete_expired_refresh_tokens(batch_size => 10)")
    assert counts(fresh_db) == rows  # the token expires tomorrow: kept


def test_a_knex_schema_that_differs_is_refused_naming_each_difference(
        knex_cli: Path, fresh_db: str, scratch: Any, tmp_path: Path) -> None:
    project = knex_project(tmp_path, {
        "003_create_customers.js": ("    t.index(['segment'], 'customers_segment_idx');\n", ""),
        "007_create_refresh_tokens.js": ("t.text('token')", "t.string('token', 255)"),
    })
    knex.migrate_latest(project, url_of(fresh_db))
    rows = seed(fresh_db)
    plan = adopt.read_plan(fresh_db, FILES, "knex")
    with pytest.raises(adopt.SchemaDifferencesError) as refused:
        adopt.verify(plan, fresh_db, scratch=scratch, owner="postgres")
    assert sorted(d.id for d in refused.value.differences) == [
        "column refresh_tokens.token", "index customers_segment_idx"]
    message = str(refused.value)
    assert "index customers_segment_idx: missing on the live database" in message
    assert "column refresh_tokens.token: the files make: text NOT NULL; the live database has: " \
           "character varying(255) NOT NULL" in message
    assert not has_table(fresh_db, "schema_migrations") and counts(fresh_db) == rows  # nothing changed


def test_flyway_history_is_adopted_and_an_accepted_difference_lets_it_through(fresh_db: str, scratch: Any) -> None:
    build_with_sql(fresh_db, SPEC)
    with psycopg.connect(fresh_db, autocommit=True) as c:
        c.execute("""
            CREATE TABLE flyway_schema_history (
                installed_rank integer PRIMARY KEY, version varchar(50), description varchar(200) NOT NULL,
                type varchar(20) NOT NULL, script varchar(1000) NOT NULL, checksum integer,
                installed_by varchar(100) NOT NULL, installed_on timestamp NOT NULL DEFAULT now(),
                execution_time integer NOT NULL, success boolean NOT NULL)""")
        for rank, m in enumerate(SPEC, start=1):
            c.execute("INSERT INTO flyway_schema_history VALUES (%s, %s, %s, 'SQL', %s, 1, 'flyway', now(), 5, true)",
                      (rank, str(int(m.version)), m.name.replace("_", " "), f"V{int(m.version)}__{m.name}.sql"))
        c.execute("DROP INDEX customers_email_idx")  # the team dropped it by hand, on purpose
    rows = seed(fresh_db)
    plan = adopt.read_plan(fresh_db, FILES, "flyway")
    assert [m.version for m in plan.matched] == [m.version for m in SPEC]
    with pytest.raises(adopt.SchemaDifferencesError, match="index customers_email_idx: missing"):
        adopt.verify(plan, fresh_db, scratch=scratch, owner="postgres")
    with pytest.raises(adopt.SchemaDifferencesError, match="accepted difference 'index nope' does not occur"):
        adopt.verify(plan, fresh_db, scratch=scratch, owner="postgres",
                     accept=["index customers_email_idx", "index nope"])
    accepted = adopt.verify(plan, fresh_db, scratch=scratch, owner="postgres", accept=["index customers_email_idx"])
    assert [d.id for d in accepted] == ["index customers_email_idx"]
    adopt.record(plan, fresh_db)
    Migrator(fresh_db).apply_all(FILES)
    assert counts(fresh_db) == rows and has_table(fresh_db, "flyway_schema_history")


@pytest.mark.parametrize("tool", ["dbmate", "golang-migrate"])
def test_dbmate_and_golang_migrate_histories_are_moved_aside_and_adopted(tool: str, fresh_db: str,
                                                                          scratch: Any) -> None:
    build_with_sql(fresh_db, SPEC)
    with psycopg.connect(fresh_db, autocommit=True) as c:
        if tool == "dbmate":
            c.execute("CREATE TABLE schema_migrations (version varchar(128) PRIMARY KEY)")
            c.cursor().executemany("INSERT INTO schema_migrations VALUES (%s)", [(m.version,) for m in SPEC])
        else:
            c.execute("CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)")
            c.execute("INSERT INTO schema_migrations VALUES (7, false)")
    rows = seed(fresh_db)
    plan = adopt.read_plan(fresh_db, FILES, tool)
    assert [m.version for m in plan.matched] == [m.version for m in SPEC]
    adopt.verify(plan, fresh_db, scratch=scratch, owner="postgres")
    adopt.record(plan, fresh_db)
    aside = f"schema_migrations_{tool.replace('-', '_')}"
    with psycopg.connect(fresh_db) as c:
        kept = c.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(aside))).fetchone()
    assert kept == ((len(SPEC),) if tool == "dbmate" else (1,))
    Migrator(fresh_db).apply_all(FILES)
    assert [v for v, _ in tracking_rows(fresh_db)] == [m.version for m in FILES]
    assert counts(fresh_db) == rows


def test_histories_that_cannot_be_matched_are_refused(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as c:
        c.execute("CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)")
        c.execute("INSERT INTO schema_migrations VALUES (3, true)")
    with pytest.raises(adopt.AdoptionError, match=r"version 3 is marked dirty"):
        adopt.read_plan(fresh_db, FILES, "golang-migrate")
    with pytest.raises(adopt.AdoptionError, match=r"its columns are \['dirty', 'version'\]; dbmate's are"):
        adopt.read_plan(fresh_db, FILES, "dbmate")
    with pytest.raises(adopt.AdoptionError, match=r"no table public\.knex_migrations"):
        adopt.read_plan(fresh_db, FILES, "knex")
    records = [adopt.ForeignRecord("001_a.js", 1), adopt.ForeignRecord("003_c.js", 3),
               adopt.ForeignRecord("20240101_x.js", 20240101)]
    with pytest.raises(adopt.AdoptionError, match=r"20240101_x\.js: no file in the migrations folder has version"):
        adopt.match("knex", records, FILES)
    with pytest.raises(adopt.AdoptionError, match=r"002_create_users\.sql: not in the history"):
        adopt.match("knex", records[:2], FILES)


def test_catalog_diff_names_renames_and_every_category(fresh_db: str, local_postgres: LocalPostgres) -> None:
    build_with_sql(fresh_db, SPEC)
    with psycopg.connect(fresh_db) as c:
        before = catalog.snapshot(c)
    with psycopg.connect(fresh_db, autocommit=True) as c:
        c.execute("ALTER INDEX customers_segment_idx RENAME TO customers_by_segment")
        c.execute("ALTER TABLE users ALTER COLUMN last_login_at SET DEFAULT now()")
        c.execute("ALTER TABLE users DROP CONSTRAINT users_role_check")
        c.execute("ALTER TABLE organizations DISABLE TRIGGER organizations_set_updated_at")
        c.execute("CREATE FUNCTION extra() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        c.execute("CREATE TABLE stray (id int)")
        after = catalog.snapshot(c)
    found = {d.id: d for d in catalog.diff(before, after)}
    assert set(found) == {"relation stray", "column stray.id", "column users.last_login_at",
                          "constraint users.users_role_check", "index customers_segment_idx",
                          "index customers_by_segment", "trigger organizations.organizations_set_updated_at",
                          "function extra()"}
    assert found["index customers_segment_idx"].note == "the live database has it as customers_by_segment"
    assert "(disabled)" in str(found["trigger organizations.organizations_set_updated_at"])


def test_a_role_password_set_as_a_scram_verifier_logs_in(local_postgres: LocalPostgres) -> None:
    role, password = f"v_{uuid.uuid4().hex[:8]}", "Gen3rated" + uuid.uuid4().hex
    with psycopg.connect(local_postgres.address.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(scram_verifier(password))))
    try:
        with psycopg.connect(local_postgres.address.dsn(user=role, password=password)) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(local_postgres.address.dsn(user=role, password=password + "x")).close()
    finally:
        with psycopg.connect(local_postgres.address.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
