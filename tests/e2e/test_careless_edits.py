"""Careless edits of applied migrations on a live stack with rows: nothing is lost, nothing wedges
the stack, and no failure ends in a traceback (README, "Failure drills").

One container-mode stack (protectData false, not named dev), created by the program as it was before
this guard existed (the commit below, from `git archive`, run in a subprocess, as
tests/e2e/test_security.py does), then driven by this program. The tests share it, in file order.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pulumi import automation as auto

from devsupport.local_postgres import free_port
from scripts.stack import program
from tests.e2e.conftest import StackFactory, clean_up_stack, program_at, pulumi_bin_dir, require_provider_plugins
from tests.e2e.test_security import OLD_PROGRAM_UP

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PROJECT = "customer-insights-db"
# The last commit before a migration's identity was its version (renames were replacements).
BEFORE_THE_GUARD = "bf0ddb600b58cd17487c09dfda358bc49292aeda"

FIRST, FIRST_RENAMED = "001_create_organizations", "001_orgs_renamed"
LAST, LAST_RENAMED = "902_create_drill_notes", "902_notes_renamed"


@dataclass
class Live:
    stack: auto.Stack
    sql: Path
    container: str
    database: str

    def owner_url(self) -> str:
        return str(self.stack.outputs()["connection_urls"].value["owner"])

    def query(self, statement: str | sql.Composed) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.owner_url(), autocommit=True) as conn:
            cur = conn.execute(statement)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def tracking(self) -> dict[str, tuple[str, str]]:
        return {v: (n, c) for v, n, c in self.query("SELECT version, name, checksum FROM schema_migrations")}

    def rows(self) -> dict[str, int]:
        return {t: self.query(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t)))[0][0]
                for t in ("organizations", "drill_notes")}

    def superuser_sql(self, statement: str, **variables: str) -> str:
        """SQL as the container's superuser; `variables` are psql variables (`:'name'` in `statement`)."""
        given = [arg for name, value in variables.items() for arg in ("-v", f"{name}={value}")]
        done = subprocess.run(["docker", "exec", "-i", self.container, "psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1",
                               *given, "-U", "postgres", "-d", self.database], input=statement,
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The CLI as a user runs it in the project (the commands the messages name)."""
        return subprocess.run([str(pulumi_bin_dir() / "pulumi"), *args, "--stack", self.stack.name,
                               "--non-interactive"], cwd=self.stack.workspace.work_dir,
                              env={**os.environ, **self.stack.workspace.env_vars},
                              capture_output=True, text=True, timeout=300, check=False)

    def rename(self, old: str, new: str) -> None:
        for suffix in (".sql", ".down.sql"):
            (self.sql / f"{old}{suffix}").rename(self.sql / f"{new}{suffix}")

    def fails(self, operation: Any, *fragments: str, **kwargs: Any) -> str:
        """`operation` fails; its whole output names every fragment and holds no Python traceback."""
        with pytest.raises(auto.errors.CommandError) as failure:
            operation(color="never", **kwargs)
        message = str(failure.value)
        for fragment in fragments:
            assert fragment in message, (fragment, message[-4000:])
        assert "Traceback" not in message and 'File "' not in message, message[-4000:]
        print(message)  # the test's log shows what a user sees
        return message

    def converged(self) -> None:
        self.stack.preview(expect_no_changes=True, color="never")


def add_drill_migrations(sql: Path) -> None:
    """901 adds a nullable column; 902, the last, a table nothing depends on (its down script drops it)."""
    (sql / "901_add_organization_plan.sql").write_text("ALTER TABLE organizations ADD COLUMN plan text;\n")
    (sql / "901_add_organization_plan.down.sql").write_text("ALTER TABLE organizations DROP COLUMN plan;\n")
    (sql / f"{LAST}.sql").write_text("CREATE TABLE drill_notes (id int PRIMARY KEY, body text NOT NULL);\n")
    (sql / f"{LAST}.down.sql").write_text("-- squawk-ignore-file ban-drop-table\nDROP TABLE drill_notes;\n")


@pytest.fixture(scope="module")
def live(pulumi_cli: auto.PulumiCommand, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    require_provider_plugins()
    tmp = tmp_path_factory.mktemp("careless")
    (tmp / "state").mkdir()
    old = program_at(BEFORE_THE_GUARD, tmp / "before")
    sql = tmp / "sql"
    sql.mkdir()
    for path in (REPO / "sql").glob("*.sql"):
        (sql / path.name).write_text(path.read_text())
    add_drill_migrations(sql)

    database = f"care_{uuid.uuid4().hex[:8]}"
    stack = StackFactory(pulumi_cli, tmp / "state")(program, {
        "hostPort": auto.ConfigValue(str(free_port())), "databaseName": auto.ConfigValue(database),
        "protectData": auto.ConfigValue("false"), "migrationsDir": auto.ConfigValue(str(sql)),
    }, project=PROJECT)
    try:
        old_env = {**stack.workspace.env_vars, "PYTHONPATH": str(old)}
        env = {**os.environ, "OLD_PROGRAM_ENV": json.dumps(old_env), "PYTHONPATH": str(old)}
        before_up = subprocess.run(
            [sys.executable, "-c", OLD_PROGRAM_UP, str(old), stack.workspace.work_dir, stack.name, PROJECT,
             str(pulumi_bin_dir().parent)],
            cwd=old, env=env, capture_output=True, text=True, timeout=900, check=False,
        )
        assert before_up.returncode == 0, before_up.stdout[-3000:] + before_up.stderr[-3000:]
        live = Live(stack=stack, sql=sql, container=f"postgres-{stack.name}", database=database)
        live.query("INSERT INTO organizations (name) VALUES ('Acme'), ('Globex')")
        live.query("INSERT INTO drill_notes VALUES (1, 'one'), (2, 'two'), (3, 'three')")
        yield live
    finally:
        clean_up_stack(stack)


def test_a_stack_created_by_the_previous_program_changes_no_migration(live: Live) -> None:
    # The previous program's stack converges with one `up` (a new container on the same volume, the
    # cleanup job's history function, ...), and no Migration resource is among what it changes.
    preview = live.stack.preview(color="never")
    steps = ("~  ", "+  ", "-  ", "+- ", "-+ ", "++ ", "--")
    changed = [line for line in preview.stdout.splitlines() if line.strip().startswith(steps)]
    assert changed, preview.stdout  # the control: the preview's changes are read from these lines
    assert not [line for line in changed if "dynamic/db:Migration" in line], preview.stdout
    rows, tracking = live.rows(), live.tracking()
    live.stack.up(color="never")
    assert live.rows() == rows and live.tracking() == tracking
    live.converged()


def test_renaming_the_first_and_the_last_applied_file_is_refused_then_kept_by_the_named_state_rename(
        live: Live) -> None:
    for old, new in ((FIRST, FIRST_RENAMED), (LAST, LAST_RENAMED)):
        before, rows = live.tracking(), live.rows()
        live.rename(old, new)
        version = old[:3]
        fragments = (f"{new}.sql has version {version}, which is applied as {old}.sql",
                     "Refused; nothing ran.", f"Rename it back to {old}.sql", "pulumi state rename '")
        message = live.fails(live.stack.preview, *fragments)
        if old == FIRST:  # `up` without a preview is refused the same way (create, under the migration lock)
            live.fails(live.stack.up, *fragments)
        assert live.tracking() == before and live.rows() == rows

        # The message's way to keep the new name: rename the resource, then `up` records it, running nothing.
        found = re.search(r"`pulumi (state rename '[^']+' \S+)`", message)
        assert found, message[-3000:]
        renamed = live.cli(*shlex.split(found.group(1)), "--yes")
        assert renamed.returncode == 0, renamed.stdout + renamed.stderr
        result = live.stack.up(color="never")
        assert result.summary.resource_changes.get("update") == 1, result.summary.resource_changes
        assert set(result.summary.resource_changes) <= {"update", "same"}
        assert live.tracking() == {**before, version: (new[4:], before[version][1])}
        assert live.rows() == rows  # 902's table has no dependents: a replacement would have dropped it
        live.converged()


def test_two_files_swapping_versions_are_refused(live: Live) -> None:
    before, rows = live.tracking(), live.rows()
    plan, notes = "901_add_organization_plan", LAST_RENAMED
    live.rename(plan, "902_add_organization_plan")
    live.rename(notes, "901_notes_renamed")
    try:
        live.fails(live.stack.preview, "901_notes_renamed.sql has version 901, which is applied as "
                   f"{plan}.sql", f"holds what was applied as version 902 ({notes}.sql)", "renumbered",
                   "Refused; nothing ran.")
        assert live.tracking() == before and live.rows() == rows
    finally:
        live.rename("902_add_organization_plan", plan)
        live.rename("901_notes_renamed", notes)
    live.converged()


def test_a_removed_file_and_a_failed_down_script_never_wedge_the_stack(live: Live) -> None:
    before, rows = live.tracking(), live.rows()
    kept = {suffix: (live.sql / f"{LAST_RENAMED}{suffix}").read_text() for suffix in (".sql", ".down.sql")}
    for suffix in kept:
        (live.sql / f"{LAST_RENAMED}{suffix}").unlink()
    # `up`: the file left sql/ while applied; its down script does not run.
    message = live.fails(live.stack.up, f"{LAST_RENAMED}.sql (version 902) left the migrations directory while "
                         "applied", "its down script did not run", "Restore the file", "pulumi state delete '",
                         "pulumi destroy --target '")
    assert live.tracking() == before and live.rows() == rows

    # Reverting it on purpose, as the message says, while something made by hand depends on its table.
    found = re.search(r"`pulumi destroy --target '([^']+)'`", message)
    assert found, message[-3000:]
    live.query("CREATE VIEW drill_notes_by_hand AS SELECT id FROM drill_notes")
    live.fails(live.stack.destroy, f"{LAST_RENAMED}.down.sql, line 2: cannot drop table drill_notes because "
               "other objects depend on it", "statement: DROP TABLE drill_notes",
               "detail: view drill_notes_by_hand depends on table drill_notes", "sqlstate: 2BP01",
               f"nothing of it ran (its transaction was rolled back): {LAST_RENAMED}.sql is still applied",
               "restore its files", "pulumi state delete '", target=[found.group(1)])
    assert live.tracking() == before and live.rows() == rows

    # Keeping it after all: the files back, one `up` converges.
    for suffix, text in kept.items():
        (live.sql / f"{LAST_RENAMED}{suffix}").write_text(text)
    live.stack.up(color="never")
    live.converged()
    assert live.tracking() == before and live.rows() == rows
    live.query("DROP VIEW drill_notes_by_hand")


def test_a_migration_failing_on_the_data_shows_file_line_statement_and_postgres_message_only(live: Live) -> None:
    before = live.tracking()
    failing = live.sql / "903_require_organization_plan.sql"
    failing.write_text("-- 903: every organization has a plan.\n"
                       "ALTER TABLE organizations ALTER COLUMN plan SET NOT NULL;\n")
    try:
        message = live.fails(
            live.stack.up, '903_require_organization_plan.sql, line 2: column "plan" of relation "organizations" '
            "contains null values", "statement: ALTER TABLE organizations ALTER COLUMN plan SET NOT NULL",
            "sqlstate: 23502", "nothing of it was applied")
        assert "MigrationFailedError" not in message
        assert live.tracking() == before
    finally:
        failing.unlink()
    live.converged()


def test_a_failing_cron_job_update_says_what_to_do_and_refresh_then_up_converges(live: Live) -> None:
    job = f"{live.database}-delete-expired-refresh-tokens"
    assert live.superuser_sql("SELECT count(cron.unschedule(jobid)) FROM cron.job WHERE jobname = :'job'",
                              job=job) == "1"
    live.stack.set_config("cleanupSchedule", auto.ConfigValue("*/20 * * * *"))
    live.fails(live.stack.up, f"cron job '{job}': cannot update job", "is no longer in cron.job",
               "Run `pulumi refresh`", "then `pulumi up` schedules it again")
    live.stack.refresh(color="never")
    live.stack.up(color="never")
    assert live.superuser_sql("SELECT schedule FROM cron.job WHERE jobname = :'job'", job=job) == "*/20 * * * *"
    live.converged()


def test_destroy_still_reverts_every_migration(live: Live) -> None:
    # The guard against down scripts applies while the program runs; `pulumi destroy` does not run it.
    migrations = len(live.tracking())
    result = live.stack.destroy(color="never")
    assert (result.summary.resource_changes or {}).get("delete", 0) > migrations
    assert subprocess.run(["docker", "ps", "-aq", "--filter", f"name=^{live.container}$"],
                          capture_output=True, text=True, check=True).stdout.strip() == ""
