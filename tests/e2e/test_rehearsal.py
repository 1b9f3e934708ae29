"""`pulumi preview` rehearses every pending migration: the real CLI runs `__main__.py` (language host),
real Docker, real PostgreSQL (README, "Pull requests: the preview a reviewer reads").

One container stack with rows serves every container-mode case: its first preview (nothing exists
yet), then one preview per case, each pointing migrationsDir at a directory of its own (a copy of
sql/ plus the case's files). Cases that pass share one preview; a failing file stops the rehearsal,
so each failing case has its own. The server logs every statement on the target database and every
connection, which proves what the rehearsal did there (only reads) and did not do (no session when
nothing is pending).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from pulumi import automation as auto

from devsupport.local_postgres import LocalPostgres, ServerAddress, free_port
from devsupport.versions import pulumi_bin_dir
from scripts import preview_comment
from scripts.stack import workspace_env
from tests.e2e.conftest import PASSPHRASE, clean_up_stack, require_provider_plugins
from tests.e2e.test_preview_review import cron_target  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PROJECT = "customer-insights-db"
DATABASE = "customer_insights"
MIGRATION = "pulumi-python:dynamic/db:Migration"
REHEARSAL_APPS = ("pulumi-rehearsal", "migration-rehearsal")  # application_name of every rehearsal session

PASSING = {
    "010_add_plan_with_default.sql": "ALTER TABLE organizations ADD COLUMN plan text NOT NULL DEFAULT 'free';\n",
    "011_widen_interaction_count.sql": "ALTER TABLE customers ALTER COLUMN interaction_count TYPE bigint;\n",
    "012_index_segment_concurrently.sql": (
        "-- migrate:no-transaction\n"
        "CREATE INDEX CONCURRENTLY customers_segment_seen_idx ON customers (segment, last_seen_at);\n"),
    "013_channel_to_text.sql": "ALTER TABLE customer_interactions ALTER COLUMN channel TYPE text;\n",
    "014_create_audit_log.sql": (
        "CREATE TABLE audit_log (id bigint PRIMARY KEY, note text);\n"
        "CREATE INDEX audit_log_note_idx ON audit_log (note);\n"
        "ALTER TABLE audit_log ADD COLUMN recorded_at timestamptz NOT NULL;\n"),
}


NOT_NULL = "ALTER TABLE organizations ADD COLUMN plan text NOT NULL;\n"


def project_dir(path: Path) -> Path:
    """A CLI project whose program is this repository's `__main__.py` (its stack config stays here)."""
    path.mkdir(parents=True)
    (path / "Pulumi.yaml").write_text(f"name: {PROJECT}\nruntime: python\n")
    (path / "__main__.py").write_text(f"import runpy\nrunpy.run_path({str(REPO / '__main__.py')!r}, "
                                      "run_name='__main__')\n")
    return path


def migrations_dir(root: Path, name: str, files: dict[str, str] | None = None) -> Path:
    """sql/ plus `files`, in a directory of its own."""
    target = root / name
    shutil.copytree(REPO / "sql", target)
    for filename, text in (files or {}).items():
        (target / filename).write_text(text)
    return target


@dataclass
class Preview:
    returncode: int
    stdout: str
    stderr: str
    data: dict[str, Any] = field(default_factory=dict)

    def diagnostics(self) -> dict[str, list[tuple[str, str]]]:
        """(severity, message) by resource name; the stack's own under ''."""
        found: dict[str, list[tuple[str, str]]] = {}
        for diag in self.data.get("diagnostics") or []:
            name = (diag.get("urn") or "::").rsplit("::", 1)[1]
            found.setdefault(name if MIGRATION in (diag.get("urn") or "") else "", []).append(
                (diag.get("severity", ""), " ".join(str(diag.get("message", "")).split())))
        return found

    def rehearsals(self) -> dict[str, dict[str, Any]]:
        """The rehearsal-json object of each migration that has one."""
        return {name: json.loads(m.removeprefix("rehearsal-json: "))
                for name, diags in self.diagnostics().items() if name
                for _, m in diags if m.startswith("rehearsal-json: ")}


class CliStack:
    """A stack of the project in `project`, driven through the `pulumi` CLI (stack.up/destroy, and
    `pulumi preview` as a command, as CI runs it)."""

    def __init__(self, project: Path, backend: Path, config: dict[str, str], secrets: dict[str, str]) -> None:
        self.project = project
        workspace = {**workspace_env(f"file://{backend}"), "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE}
        self.env = {**os.environ, **workspace}
        cli = auto.PulumiCommand(root=str(pulumi_bin_dir().parent), skip_version_check=True)
        self.stack = auto.create_stack(f"t{uuid.uuid4().hex[:10]}", work_dir=str(project),
                                       opts=auto.LocalWorkspaceOptions(env_vars=workspace, pulumi_command=cli))
        self.stack.set_all_config({"protectData": auto.ConfigValue("false"),
                                   **{k: auto.ConfigValue(v) for k, v in config.items()},
                                   **{k: auto.ConfigValue(v, secret=True) for k, v in secrets.items()}})

    @property
    def name(self) -> str:
        return self.stack.name

    def set(self, key: str, value: str | Path | None) -> None:
        if value is None:
            self.stack.remove_config(key)
        else:
            self.stack.set_config(key, auto.ConfigValue(str(value)))

    def preview(self, *, json_output: bool = True) -> Preview:
        args = [str(pulumi_bin_dir() / "pulumi"), "preview", "--non-interactive", "--color", "never",
                "--stack", self.name, *(["--json"] if json_output else [])]
        run = subprocess.run(args, cwd=self.project, env=self.env, capture_output=True, text=True, timeout=600,
                             check=False)
        data: dict[str, Any] = {}
        if json_output and run.stdout.strip().startswith("{"):
            data = json.loads(run.stdout)
        return Preview(run.returncode, run.stdout, run.stderr, data)

    def outputs(self) -> dict[str, Any]:
        return {k: v.value for k, v in self.stack.outputs().items()}


# ------------------------------------------------------------------------------------------ the live stack


@dataclass
class Live:
    stack: CliStack
    container: str
    root: Path
    base: Path  # sql/ as applied
    first: Preview  # the preview before the first up
    counts: dict[str, int] = field(default_factory=dict)

    def psql(self, statements: str, database: str = DATABASE) -> str:
        """SQL as the container's superuser over its socket (SQL on stdin)."""
        run = subprocess.run(["docker", "exec", "-i", self.container, "psql", "-X", "-q", "-A", "-t", "-v",
                              "ON_ERROR_STOP=1", "-U", "postgres", "-d", database],
                             input=statements, capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stderr
        return run.stdout

    def preview_of(self, name: str, files: dict[str, str], **kwargs: Any) -> Preview:
        self.stack.set("migrationsDir", migrations_dir(self.root, name, files))
        try:
            return self.stack.preview(**kwargs)
        finally:
            self.stack.set("migrationsDir", self.base)

    def snapshot(self) -> str:
        """What a write would change: the public catalog (with relfilenodes), the tracking table, the
        row counts, the roles and the databases."""
        return self.psql("""
            SELECT format('%s %s %s', c.relname, c.relkind, c.relfilenode) FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1;
            SELECT format('%s.%s %s %s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull)
              FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1;
            SELECT format('%s %s %s', conname, contype, convalidated) FROM pg_constraint ORDER BY 1;
            SELECT version || ' ' || checksum FROM schema_migrations ORDER BY 1;
            SELECT 'organizations ' || count(*) FROM organizations;
            SELECT 'customers ' || count(*) FROM customers;
            SELECT 'customer_interactions ' || count(*) FROM customer_interactions;
            SELECT rolname FROM pg_roles ORDER BY 1;
            SELECT datname FROM pg_database ORDER BY 1;
        """)

    def server_log(self, since: str) -> list[str]:
        """The server's log entries since `since` (continuation lines joined to their entry)."""
        run = subprocess.run(["docker", "logs", "--since", since, self.container], capture_output=True, text=True,
                             check=True)
        entries: list[str] = []
        for line in (run.stdout + run.stderr).splitlines():
            if line.startswith(("\t", " ")) and entries:
                entries[-1] += " " + line.strip()
            else:
                entries.append(line)
        return entries


def now() -> str:
    return datetime.now(UTC).isoformat()


def rehearsal_sessions(entries: list[str]) -> list[str]:
    return [e for e in entries if "connection authorized" in e and any(f"application_name={a}" in e
                                                                       for a in REHEARSAL_APPS)]


# Statements that only read (pg_dump's LOCK is ACCESS SHARE; psycopg's and pg_dump's session setup).
READS = re.compile(r"^(SELECT|SET|SHOW|RESET|BEGIN|COMMIT|ROLLBACK|START TRANSACTION|DECLARE|FETCH|CLOSE|"
                   r"WITH\b(?!.*\b(INSERT|UPDATE|DELETE)\b)|LOCK TABLE [^;]* IN ACCESS SHARE MODE|"
                   r"COPY [^;]* TO stdout)", re.IGNORECASE)


def writes_among(statements: list[str]) -> list[str]:
    """The statements that are not reads; pg_dump's prepared SELECTs (PREPARE ... AS SELECT, then
    EXECUTE of that name) are reads."""
    prepared = {m[1] for st in statements if (m := re.match(r"PREPARE (\w+)\b[^;]* AS SELECT ", st, re.IGNORECASE))}
    return [st for st in statements if not READS.match(st) and not re.match(r"PREPARE \w+\b[^;]* AS SELECT ", st)
            and not ((m := re.match(r"EXECUTE (\w+)\b", st)) and m[1] in prepared)]


def statements_on(entries: list[str], database: str) -> list[str]:
    found = []
    for entry in entries:
        if f"db={database} " not in entry:
            continue
        m = re.search(r"LOG:\s+(?:statement|execute [^:]*): (.*?)(?: DETAIL: .*)?$", entry)
        if m:
            found.append(m[1].strip())
    return found


@pytest.fixture(scope="module")
def live(pulumi_cli: auto.PulumiCommand, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    require_provider_plugins()
    root = tmp_path_factory.mktemp("rehearsal")
    (root / "state").mkdir()
    base = migrations_dir(root, "applied")
    stack = CliStack(project_dir(root / "project"), root / "state",
                     {"hostPort": str(free_port()), "migrationsDir": str(base)}, {})
    try:
        first = stack.preview()
        stack.stack.up(color="never")
        live = Live(stack, f"postgres-{stack.name}", root, base, first)
        owner = stack.outputs()["connection_urls"]["owner"]
        with psycopg.connect(owner) as conn:
            # Duplicate names (a UNIQUE index fails), customers and interactions to rewrite and scan.
            conn.execute("INSERT INTO organizations (name) SELECT 'org ' || (g % 700) FROM generate_series(1, 2000) g")
            conn.execute("""
                INSERT INTO customers (organization_id, external_id, email, segment, first_seen_at, last_seen_at,
                                       interaction_count)
                SELECT o.id, 'c' || g, 'c' || g || '@example.com', 'seg' || (g % 5), now(), now(), g
                FROM generate_series(1, 20000) g, LATERAL (SELECT id FROM organizations LIMIT 1) o""")
            conn.execute("""
                INSERT INTO customer_interactions (customer_id, organization_id, "timestamp", channel, event_type)
                SELECT id, organization_id, now() - interval '1 day', 'email', 'open' FROM customers LIMIT 3000""")
        live.counts = {"organizations": 2000, "customers": 20000, "customer_interactions": 3000}
        # Every connection and, on the target database, every statement goes to the container's log.
        live.psql("ALTER SYSTEM SET log_connections = on;\n"
                  "ALTER SYSTEM SET log_line_prefix = '%m [%p] db=%d app=%a ';\nSELECT pg_reload_conf();\n"
                  f"ALTER DATABASE {DATABASE} SET log_statement = 'all';\n", database="postgres")
        yield live
    finally:
        clean_up_stack(stack.stack)


# ------------------------------------------------------------------------------------------ container mode


def test_first_preview_rehearses_every_file_from_nothing_on_a_container_of_the_image(live: Live) -> None:
    assert live.first.returncode == 0, live.first.stderr
    rehearsals = live.first.rehearsals()
    assert sorted(rehearsals) == sorted(p.name.removesuffix(".sql") for p in (REPO / "sql").glob("[0-9]*[0-9]_*.sql")
                                        if not p.name.endswith(".down.sql"))
    for name, found in rehearsals.items():
        assert found["from_files_alone"] and found["migration"]["status"] == "passes", (name, found)
        assert found["target_read"] is False and found["scratch"].startswith("container rehearsal-"), found
    infos = [m for _, m in live.first.diagnostics()["001_create_organizations"]]
    assert any(m.startswith("rehearsal ran on an empty database") for m in infos), infos


def test_passing_migrations_report_locks_rewrites_and_estimates_and_write_nothing(live: Live) -> None:
    before, since = live.snapshot(), now()
    preview = live.preview_of("passing", PASSING)
    entries = live.server_log(since)
    assert preview.returncode == 0, preview.stderr + preview.stdout[-3000:]
    rehearsals = preview.rehearsals()
    assert sorted(rehearsals) == sorted(f.removesuffix(".sql") for f in PASSING)

    def statement(name: str, index: int = 0) -> dict[str, Any]:
        found = rehearsals[name]["migration"]
        assert found["status"] == "passes", found
        return dict(found["statements"][index])

    plan = statement("010_add_plan_with_default")
    assert [(lk["mode"], lk["relation"]) for lk in plan["locks"] if lk["kind"] == "table"] == [
        ("ACCESS EXCLUSIVE", "public.organizations")]
    assert plan["rewrites"] == [] and "no rewrite" in plan["text"]

    widen = statement("011_widen_interaction_count")
    assert "public.customers" in [r["relation"] for r in widen["rewrites"]]
    assert widen["estimate_ms"] is not None and "REWRITES public.customers" in widen["text"]
    assert any(s["relation"] == "public.customers" and s["rows"] == 20000 for s in widen["sizes"]), widen["sizes"]

    concurrently = statement("012_index_segment_concurrently")
    assert rehearsals["012_index_segment_concurrently"]["migration"]["transactional"] is False
    assert ("SHARE UPDATE EXCLUSIVE", "public.customers") in [(lk["mode"], lk["relation"])
                                                              for lk in concurrently["locks"]]
    assert not concurrently["blocking"]

    channel = statement("013_channel_to_text")
    assert channel["rewrites"] == [], channel
    diagnostics = preview.diagnostics()
    # squawk's warnings (the rehearsal's own warning lines are its blocking statements).
    warnings = {name: [m for s, m in diags if s == "warning" and not m.startswith("warning: rehearsal: ")]
                for name, diags in diagnostics.items()}
    # squawk's "changing-column-type ... rewritten" is disproved: a note, not a warning.
    assert not any("changing-column-type" in w for w in warnings["013_channel_to_text"]), warnings
    assert any(m.startswith("not a risk here: destructive: ALTER TABLE customer_interactions") and
               "changing-column-type" in m for _, m in diagnostics["013_channel_to_text"])
    # The statement ran under the session's lock_timeout: squawk's "missing lock_timeout" is a note.
    assert warnings.get("010_add_plan_with_default", []) == [], warnings
    assert any(m.startswith("not a risk here: blocking: ALTER TABLE organizations ADD COLUMN plan (line 1)")
               and "require-lock-timeout" in m for _, m in diagnostics["010_add_plan_with_default"])
    # A table the file itself creates: no lock warning at all.
    assert all(not st["blocking"] for st in rehearsals["014_create_audit_log"]["migration"]["statements"])
    assert warnings.get("014_create_audit_log", []) == [], warnings
    # One info line per statement on the resource, in the preview itself.
    infos = [m for s, m in diagnostics["012_index_segment_concurrently"] if s == "info"]
    assert any(m.startswith("rehearsal: line 2: CREATE INDEX CONCURRENTLY customers_segment_seen_idx") and
               "SHARE UPDATE EXCLUSIVE on public.customers (" in m for m in infos), infos

    # The target is not written: catalog, tracking table, rows, roles, databases as they were ...
    assert live.snapshot() == before
    # ... and every statement its sessions ran there (pg_dump, sizes, data checks) only reads.
    assert rehearsal_sessions(entries), entries[-20:]
    ran = statements_on(entries, DATABASE)
    assert any("count(" in s.lower() or "reltuples" in s for s in ran), ran
    assert writes_among(ran) == [], writes_among(ran)

    comment = preview_comment.render(preview.data, "staging")
    (live.root / "preview.json").write_text(preview.stdout)
    (live.root / "comment.md").write_text(comment)
    print(comment)
    lines = comment.splitlines()
    assert lines[2].startswith("**⚠️ Review needed: 5 migrations will run (rehearsed: 5 of 5, 0 failing statements);"
                               ), lines[2]
    assert "3 blocking statements" in lines[2], lines[2]  # 010 and 011 on existing tables, 013's brief lock
    assert "  | line | statement | lock | objects | rewrite | est. time at target size | data check |" in lines
    assert any(line.startswith("  | 1 | `ALTER TABLE customers ALTER COLUMN interaction_count TYPE bigint` | "
                               "🔒 ACCESS EXCLUSIVE | public.customers (20,000 rows)") and
               "| **yes**: public.customers" in line for line in lines), comment
    assert any(line.startswith("  | 2 | `CREATE INDEX CONCURRENTLY customers_segment_seen_idx") and
               "| SHARE UPDATE EXCLUSIVE |" in line for line in lines), comment


def failing(preview: Preview, name: str) -> tuple[list[str], str]:
    """The errors on migration `name` and the whole output; the preview failed without a traceback."""
    output = preview.stdout + preview.stderr
    assert preview.returncode != 0, output[-3000:]
    assert "Traceback" not in output and 'File "' not in output, output[-3000:]
    errors = [m for s, m in preview.diagnostics().get(name, []) if s == "error"]
    return errors, output


def test_not_null_column_without_default_fails_the_preview_naming_file_and_row_count(live: Live) -> None:
    before = live.snapshot()
    preview = live.preview_of("not_null", {"010_add_plan.sql": NOT_NULL}, json_output=False)
    output = preview.stdout + preview.stderr
    assert preview.returncode != 0 and "Traceback" not in output and 'File "' not in output, output[-3000:]
    # Under the migration, its statement's line; at the end, the preview's error: file, line, statement, count.
    assert ("error: 010_add_plan.sql, line 1: ALTER TABLE organizations ADD COLUMN plan text NOT NULL: "
            "ACCESS EXCLUSIVE on public.organizations") in output, output[-3000:]
    assert ("check: FAILS: 2,000 rows in public.organizations (new NOT NULL column plan without a default)"
            in output), output[-3000:]
    assert ("  - 010_add_plan.sql, line 1: ALTER TABLE organizations ADD COLUMN plan text NOT NULL: 2,000 rows in "
            "public.organizations (new NOT NULL column plan without a default)") in output, output[-3000:]
    assert "The rehearsal of the pending migrations failed; nothing was applied" in output
    assert live.snapshot() == before


@pytest.mark.parametrize(("case", "files", "where", "expected"), [
    ("unique", {"010_unique_org_name.sql": "CREATE UNIQUE INDEX organizations_name_key ON organizations (name);\n"},
     "010_unique_org_name.sql, line 1: CREATE UNIQUE INDEX organizations_name_key ON organizations (name): ",
     "FAILS: 700 groups of duplicate keys of organizations_name_key in public.organizations"),
    ("syntax", {"010_typo.sql": "ALTER TABLE organizations ADD COLUMN plan text;\n"
                                "ALTER TABLE organizations ADDD x int;\n"},
     "010_typo.sql, line 2: ALTER TABLE organizations ADDD x int: ",
     'FAILS: syntax error at or near "ADDD" (SQLSTATE 42601)'),
    ("missing", {"010_missing.sql": "-- a table that does not exist\n\n"
                                    "ALTER TABLE organisations ADD COLUMN plan text;\n"},
     "010_missing.sql, line 3: ALTER TABLE organisations ADD COLUMN plan text: ",
     'FAILS: relation "organisations" does not exist (SQLSTATE 42P01)'),
])
def test_a_failing_statement_fails_the_preview_with_file_and_line(live: Live, case: str, files: dict[str, str],
                                                                   where: str, expected: str) -> None:
    preview = live.preview_of(case, files)
    name = next(iter(files)).removesuffix(".sql")
    errors, _ = failing(preview, name)
    assert any(e.startswith(f"error: {where}") and expected in e for e in errors), errors
    # The preview's own error (the last lines a reader sees) names them too.
    stack_errors = [m for s, m in preview.diagnostics()[""] if s == "error"]
    assert any(f"- {where}{expected.removeprefix('FAILS: ')}" in m for m in stack_errors), stack_errors
    comment = preview_comment.render(preview.data)
    assert comment.splitlines()[2].startswith("**❌ The rehearsal failed: 1 failing statement"), comment


def test_off_switch_no_rehearsal_and_no_session(live: Live) -> None:
    live.stack.set("rehearseMigrations", "false")
    try:
        since = now()
        preview = live.preview_of("off", {"010_add_plan_with_default.sql": PASSING["010_add_plan_with_default.sql"]})
        entries = live.server_log(since)
    finally:
        live.stack.set("rehearseMigrations", None)
    assert preview.returncode == 0, preview.stderr
    messages = [m for _, m in preview.diagnostics()["010_add_plan_with_default"]]
    assert messages[0].startswith("will run: ALTER TABLE organizations ADD COLUMN plan"), messages  # squawk's review
    assert not any("rehears" in m for m in messages), messages
    assert rehearsal_sessions(entries) == []


def test_no_pending_migration_no_rehearsal_and_no_session(live: Live) -> None:
    since = now()
    preview = live.stack.preview()
    entries = live.server_log(since)
    assert preview.returncode == 0, preview.stderr
    assert preview.data["changeSummary"].get("create", 0) == 0
    assert not any("rehears" in m for diags in preview.diagnostics().values() for _, m in diags)
    assert rehearsal_sessions(entries) == []
    assert [e for e in entries if "connection authorized" in e and f"database={DATABASE}" in e] == []


# ------------------------------------------------------------------------------------------ external mode


def url_of(address: ServerAddress) -> str:
    return f"postgresql://{quote(address.user)}:{quote(address.password)}@{address.host}:{address.port}/postgres"


def test_external_mode_rehearses_on_the_configured_scratch_server(
        provider_plugins, pg_server: ServerAddress, cron_target, tmp_path: Path) -> None:  # noqa: F811
    scratch = LocalPostgres().start()
    (tmp_path / "state").mkdir()
    database, prefix = f"rh_{uuid.uuid4().hex[:8]}", f"r{uuid.uuid4().hex[:6]}"
    base = migrations_dir(tmp_path, "applied")
    stack = CliStack(project_dir(tmp_path / "project"), tmp_path / "state", {
        "mode": "external", "externalHost": pg_server.host, "externalPort": str(pg_server.port),
        "externalAdminUser": pg_server.user, "externalSslMode": "disable", "externalAdminIsSuperuser": "true",
        "databaseName": database, "rolePrefix": prefix, "migrationsDir": str(base),
    }, {"externalAdminPassword": pg_server.password, "rehearsalScratchUrl": url_of(scratch.address)})
    try:
        stack.stack.up(color="never")
        with psycopg.connect(pg_server.dsn(database)) as conn:
            conn.execute("INSERT INTO organizations (name) SELECT 'org ' || g FROM generate_series(1, 300) g")
        stack.set("migrationsDir", migrations_dir(tmp_path, "pending", {
            "010_add_plan.sql": NOT_NULL}))
        preview = stack.preview()
        errors, output = failing(preview, "010_add_plan")
        assert any("FAILS: 300 rows in public.organizations" in e for e in errors), errors
        found = preview.rehearsals()["010_add_plan"]
        assert found["scratch"] == f"{scratch.address.host}:{scratch.address.port}" and found["target_read"], found
        assert pg_server.password not in output and scratch.password not in output
        # The scratch server got the roles (NOLOGIN) and kept no database; the target got no scratch database.
        with psycopg.connect(scratch.address.dsn()) as conn:
            assert conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (f"{prefix}_owner",)
                                ).fetchone() == (False,)
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'rehearsal%'").fetchone() == (0,)
        with psycopg.connect(pg_server.dsn()) as conn:
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'rehearsal%'").fetchone() == (0,)
        stack.set("migrationsDir", base)
    finally:
        clean_up_stack(stack.stack)
        scratch.stop()
