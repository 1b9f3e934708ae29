"""Least privilege, credential rotation, authentication and secret-free errors (issue 9), on one live
container-mode stack of the real program.

The stack is created by the program as it was before the privilege exceptions existed (the commit
below, from `git archive`, run in a subprocess), then brought to this program with one `pulumi up`:
that is how an existing stack converges. Every later test uses that stack, in file order:
the privilege matrix (docs/security.md), authentication, rotation (which changes passwords, so it comes
after the matrix), and errors without secrets (which break and repair credentials by hand).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pulumi import automation as auto

from devsupport.local_postgres import free_port
from infra.components.database import SECRET_COLUMNS
from infra.config import RolePurpose
from scripts.stack import program
from tests.e2e.conftest import (
    StackFactory,
    assert_not_in_state,
    clean_up_stack,
    program_at,
    pulumi_bin_dir,
    require_provider_plugins,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PROJECT = "customer-insights-db"
# The last commit before TablePrivileges: the privileges every stack created until then has.
BEFORE_THE_EXCEPTIONS = "8c4dc5c0868bfcb398268c3c31bcb7f24927460d"
PASSWORD_FILE = "/etc/postgresql-secrets/superuser-password"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
ROLE = "postgresql:index/role:Role"


# Runs the old program on the same stack: its own interpreter, so its `infra` package is the old one.
OLD_PROGRAM_UP = """
import json, os, runpy, sys
from pulumi import automation as auto
old, work_dir, stack_name, project, cli_root = sys.argv[1:6]
sys.path.insert(0, old)
def program():
    runpy.run_path(os.path.join(old, "__main__.py"), run_name="__main__")
stack = auto.select_stack(stack_name, project_name=project, program=program, opts=auto.LocalWorkspaceOptions(
    work_dir=work_dir, env_vars=json.loads(os.environ["OLD_PROGRAM_ENV"]),
    pulumi_command=auto.PulumiCommand(root=cli_root, skip_version_check=True)))
result = stack.up(color="never", on_output=print, show_secrets=False)
print("RESOURCE_CHANGES=" + json.dumps(result.summary.resource_changes))
"""


class ProcessWatch:
    """Samples every process's command line and environment (`ps e`) while a command runs."""

    def __init__(self) -> None:
        self.lines: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["ps", "axeww", "-o", "pid=,args="], capture_output=True, text=True, check=True)
            self.lines.update(out.stdout.splitlines())
            self._stop.wait(0.2)

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Live:
    stack: auto.Stack
    backend: Path
    container: str
    database: str
    superuser_password: str
    before: dict[str, bool]  # the holes, probed on the stack the old program made
    converge: auto.UpResult
    processes: set[str]
    converge_changes: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)  # everything every pulumi command printed
    # `docker logs` of every container the stack had (the converging up replaces the first one)
    container_logs: list[str] = field(default_factory=list)

    def outputs(self) -> dict[str, Any]:
        return {k: v.value for k, v in self.stack.outputs().items()}

    def urls(self) -> dict[str, str]:
        return dict(self.outputs()["connection_urls"])

    def run(self, command: Callable[..., Any], **kwargs: Any) -> Any:
        """A stack command whose output is kept (for the secret checks); failures re-raised.

        Secrets are shown as the CLI shows them (the Automation API's up/refresh default to showing them).
        """
        if "show_secrets" in inspect.signature(command).parameters:
            kwargs.setdefault("show_secrets", False)
        try:
            return command(color="never", on_output=self.logs.append, **kwargs)
        except auto.errors.CommandError as exc:
            self.logs.append(str(exc))
            raise

    def psql(self, statements: str, database: str | None = None) -> str:
        """SQL as the container's superuser over its Unix socket (trust inside the container only); SQL on
        stdin, so no literal ever reaches a process's command line."""
        result = subprocess.run(
            ["docker", "exec", "-i", self.container, "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-U", "postgres", "-d", database or self.database],
            input=statements, capture_output=True, text=True, check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


def holes(urls: dict[str, str]) -> dict[str, bool]:
    def works(purpose: str, statement: str) -> bool:
        with psycopg.connect(urls[purpose], autocommit=True) as conn:
            return attempt(conn, statement)
    return {
        "readonly reads refresh_tokens.token": works("readonly", "SELECT token FROM refresh_tokens LIMIT 0"),
        "readonly reads users.password_hash": works("readonly", "SELECT password_hash FROM users LIMIT 0"),
        "app writes schema_migrations": works("app", "DELETE FROM schema_migrations WHERE false"),
    }


@pytest.fixture(scope="module")
def live(pulumi_cli: auto.PulumiCommand, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    require_provider_plugins()
    tmp = tmp_path_factory.mktemp("security")
    backend = tmp / "state"
    backend.mkdir()
    old = program_at(BEFORE_THE_EXCEPTIONS, tmp / "before")

    database = f"sec_{uuid.uuid4().hex[:8]}"
    stack = StackFactory(pulumi_cli, backend)(program, {
        "hostPort": auto.ConfigValue(str(free_port())), "databaseName": auto.ConfigValue(database),
        "protectData": auto.ConfigValue("false"),
    }, project=PROJECT)
    try:
        # PYTHONPATH: the dynamic-provider host unpickles the old program's providers from the old tree too
        old_env = {**stack.workspace.env_vars, "PYTHONPATH": str(old)}
        env = {**os.environ, "OLD_PROGRAM_ENV": json.dumps(old_env), "PYTHONPATH": str(old)}
        with ProcessWatch() as watch:
            before_up = subprocess.run(
                [sys.executable, "-c", OLD_PROGRAM_UP, str(old), stack.workspace.work_dir, stack.name, PROJECT,
                 str(pulumi_bin_dir().parent)],
                cwd=old, env=env, capture_output=True, text=True, timeout=900, check=False,
            )
        assert before_up.returncode == 0, before_up.stdout[-3000:] + before_up.stderr[-3000:]
        container = f"postgres-{stack.name}"
        superuser_password = subprocess.run(["docker", "exec", container, "cat", PASSWORD_FILE],
                                            capture_output=True, text=True, check=True).stdout
        assert len(superuser_password) >= 20
        urls = {k: v.value for k, v in stack.outputs().items()}["connection_urls"]
        before = holes(urls)
        live = Live(stack=stack, backend=backend, container=container, database=database,
                    superuser_password=superuser_password, before=before, converge=None,  # type: ignore[arg-type]
                    processes=watch.lines, logs=[before_up.stdout, before_up.stderr])
        first = subprocess.run(["docker", "logs", container], capture_output=True, text=True, check=True)
        live.container_logs.append(first.stdout + first.stderr)
        events: list[auto.EngineEvent] = []
        with ProcessWatch() as watch:
            live.converge = live.run(stack.up, on_event=events.append)
        live.converge_changes = changed_resources(events)
        live.processes |= watch.lines
        yield live
    finally:
        clean_up_stack(stack)


# ------------------------------------------------------------------------------------------- 1-3: privileges


def test_a_stack_created_before_the_exceptions_converges_with_one_up(live: Live) -> None:
    # The holes were real on the old stack (so the matrix test below can fail) ...
    assert live.before == {k: True for k in live.before}
    # ... and one `up` creates the exception grants, changing nothing else.
    grant = "postgresql:index/grant:Grant"
    exceptions = {("customer-insights:db:TablePrivileges", "table-privileges"), *{
        (grant, f"table-privileges-{name}") for name in (
            "readonly-users-revoke", "readonly-users-columns", "readonly-refresh_tokens-revoke",
            "readonly-refresh_tokens-columns", "app-history-revoke")}}
    # (other concerns may add resources of their own; nothing that exists is updated, replaced or deleted)
    assert exceptions <= set(live.converge_changes), live.converge_changes
    # The cleanup job alone is updated, in place: it gains its run-history function (infra/dynamic/cron_job.py).
    job = ("pulumi-python:dynamic/db:CronJob", "token-cleanup")
    assert live.converge_changes.get(job, {"update"}) == {"update"}, live.converge_changes
    # The server changes once: a new container on the same volume (no pulumi-docker health wait, the
    # program waits for a login: ServerReady), and the unused network goes (infra/components/server.py).
    server = {("docker:index/container:Container", "postgres"): {"replace", "create-replacement", "delete-replaced"},
              ("docker:index/network:Network", "postgres-network"): {"delete"}}
    for key, ops in server.items():
        assert live.converge_changes.get(key, ops) <= ops, live.converge_changes
    assert all(ops == {"create"} for key, ops in live.converge_changes.items() if key != job and key not in server), (
        live.converge_changes)
    assert holes(live.urls()) == {k: False for k in live.before}
    live.run(live.stack.preview, expect_no_changes=True)


MATRIX_DOC = REPO / "docs" / "security.md"
MATRIX = re.compile(r"<!-- privilege-matrix:begin -->\n(.*?)<!-- privilege-matrix:end -->", re.S)
OPS = ("I", "U", "D", "T", "DDL", "X")
NOTHING = "\u2013"  # the matrix's en dash: no privilege at all


@dataclass(frozen=True)
class Cell:
    select: frozenset[str] | None  # readable non-secret columns ("S" = all of them); None: not a table
    secret: bool  # S*: every secret column readable
    ops: frozenset[str]

    def render(self, columns: tuple[str, ...]) -> str:
        parts = []
        if self.select:
            parts.append("S" if set(self.select) == set(columns) else f"S({', '.join(sorted(self.select))})")
        if self.secret:
            parts.append("S*")
        parts += [op for op in OPS if op in self.ops]
        return " ".join(parts) or NOTHING


def readme_matrix() -> tuple[list[str], dict[tuple[str, str], tuple[tuple[str, ...], dict[str, str]]]]:
    """(roles, {(kind, object): (secret columns, {role: cell text})}) from the table in MATRIX_DOC."""
    found = MATRIX.search(MATRIX_DOC.read_text())
    assert found, f"{MATRIX_DOC.relative_to(REPO)} has no privilege matrix between the privilege-matrix markers"
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in found.group(1).splitlines()
            if line.startswith("|")]
    header, body = rows[0], rows[2:]
    assert header[:2] == ["object", "secret columns"], header
    roles = header[2:]
    matrix = {}
    for row in body:
        kind, name = re.fullmatch(r"(?:(schema|procedure) )?`(\w+)`", row[0]).groups()  # type: ignore[union-attr]
        cells = dict(zip(roles, row[2:], strict=True))
        matrix[(kind or "table", name)] = (tuple(re.findall(r"`(\w+)`", row[1])), cells)
    return roles, matrix


def parse_cell(text: str, columns: tuple[str, ...]) -> Cell:
    select: frozenset[str] | None = frozenset()
    secret, ops = False, set()
    for token in re.findall(rf"S\([^)]*\)|S\*|[A-Z]+|{NOTHING}", text):
        if token == "S":
            select = frozenset(columns)
        elif token.startswith("S("):
            select = frozenset(c.strip() for c in token[2:-1].split(","))
        elif token == "S*":
            secret = True
        elif token in OPS:
            ops.add(token)
        else:
            assert token == NOTHING, f"unknown matrix token {token!r} in {text!r}"
    return Cell(select, secret, frozenset(ops))


def attempt(conn: psycopg.Connection[Any], statement: str | sql.Composable) -> bool:
    """True if `statement` runs, False if refused for lack of privilege; rolled back either way.

    Any other error fails the test: a probe must not pass or fail for an unrelated reason."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL lock_timeout = '5s'")
            conn.execute(statement)
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False


def probe_table(conn: psycopg.Connection[Any], table: str, columns: list[dict[str, Any]],
                secrets: tuple[str, ...]) -> Cell:
    t = sql.Identifier(table)
    plain = [c["column_name"] for c in columns if c["column_name"] not in secrets]
    # a column that takes an explicit value: INSERT/UPDATE of an identity ALWAYS column fail for other reasons
    writable = sql.Identifier(next(c["column_name"] for c in columns
                                   if c["identity_generation"] != "ALWAYS" and c["is_generated"] == "NEVER"))
    readable = frozenset(c for c in plain if attempt(conn, sql.SQL("SELECT {} FROM {} LIMIT 0").format(
        sql.Identifier(c), t)))
    secret_readable = [attempt(conn, sql.SQL("SELECT {} FROM {} LIMIT 0").format(sql.Identifier(c), t))
                       for c in secrets]
    assert len(set(secret_readable)) <= 1, f"{table}: some secret columns readable, some not"
    ops = {
        "I": sql.SQL("INSERT INTO {} ({}) SELECT NULL WHERE false").format(t, writable),
        "U": sql.SQL("UPDATE {} SET {} = NULL WHERE false").format(t, writable),
        "D": sql.SQL("DELETE FROM {} WHERE false").format(t),
        "T": sql.SQL("TRUNCATE {} CASCADE").format(t),
        "DDL": sql.SQL("ALTER TABLE {} ADD COLUMN privilege_probe integer").format(t),
    }
    return Cell(readable, any(secret_readable), frozenset(op for op, stmt in ops.items() if attempt(conn, stmt)))


def probe_procedure(conn: psycopg.Connection[Any], name: str) -> Cell:
    # batch_size => 0: past the EXECUTE check the procedure refuses it at once, so nothing runs.
    try:
        conn.execute(sql.SQL("CALL {}(batch_size => 0)").format(sql.Identifier(name)))
    except psycopg.errors.InsufficientPrivilege:
        return Cell(None, False, frozenset())
    except psycopg.errors.InvalidParameterValue:
        return Cell(None, False, frozenset({"X"}))
    raise AssertionError(f"CALL {name}(batch_size => 0) did not fail: the probe would have run it")


def test_privilege_matrix_in_the_readme_holds_on_the_live_database(live: Live) -> None:
    roles, matrix = readme_matrix()
    assert roles == [purpose.value for purpose in RolePurpose]
    urls = live.urls()
    with psycopg.connect(urls["owner"], autocommit=True) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT table_name, column_name, identity_generation, is_generated FROM information_schema.columns"
                    " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position")
        columns: dict[str, list[dict[str, Any]]] = {}
        for row in cur.fetchall():
            columns.setdefault(row["table_name"], []).append(row)
    # every table of the live schema is in the contract, and the secret columns agree with the program's
    assert {name for kind, name in matrix if kind == "table"} == set(columns)
    assert {name: secrets for (kind, name), (secrets, _) in matrix.items() if secrets} == SECRET_COLUMNS

    expected: dict[tuple[str, str], str] = {}
    actual: dict[tuple[str, str], str] = {}
    for purpose in roles:
        with psycopg.connect(urls[purpose], autocommit=True) as conn:
            for (kind, name), (secrets, cells) in matrix.items():
                plain = tuple(c["column_name"] for c in columns.get(name, []) if c["column_name"] not in secrets)
                want = parse_cell(cells[purpose], plain)
                if kind == "table":
                    assert "X" not in want.ops, f"{name}: EXECUTE is for the procedure row"
                    got = probe_table(conn, name, columns[name], secrets)
                elif kind == "schema":
                    assert want.ops <= {"DDL"} and not want.select and not want.secret, f"schema {name}: DDL only"
                    create = sql.SQL("CREATE TABLE {}.privilege_probe (id integer)").format(sql.Identifier(name))
                    got = Cell(frozenset(), False, frozenset({"DDL"}) if attempt(conn, create) else frozenset())
                else:
                    assert want.ops <= {"X"} and not want.select and not want.secret, f"procedure {name}: X only"
                    got = probe_procedure(conn, name)
                expected[(name, purpose)] = want.render(plain)
                actual[(name, purpose)] = got.render(plain)
    assert actual == expected


# ------------------------------------------------------------------------------------------- 5: authentication


def test_tcp_logins_are_scram_only_and_passwords_stored_as_scram(live: Live) -> None:
    rules = [line.split("|") for line in live.psql(
        "SELECT type, auth_method, coalesce(error, '') FROM pg_hba_file_rules").splitlines()]
    assert rules and all(error == "" for _, _, error in rules)
    network = [method for kind, method, _ in rules if kind != "local"]
    assert network and set(network) == {"scram-sha-256"}, rules  # no trust, no md5, no password over TCP
    stored = dict(line.split("|") for line in live.psql(
        "SELECT rolname, split_part(rolpassword, '$', 1) FROM pg_authid WHERE rolpassword IS NOT NULL",
        database="postgres").splitlines())
    roles = live.outputs()["roles"]
    assert {"postgres", *roles.values()} <= set(stored) and set(stored.values()) == {"SCRAM-SHA-256"}, stored
    assert live.psql("SHOW password_encryption").strip() == "scram-sha-256"

    url = live.urls()["app"]
    with psycopg.connect(url + "?require_auth=scram-sha-256") as conn:  # libpq refuses any other method
        assert conn.execute("SELECT current_user").fetchone() == (roles["app"],)
    for other in ("md5", "password", "none"):
        with pytest.raises(psycopg.OperationalError, match="server requested SASL authentication"):
            psycopg.connect(url + f"?require_auth={other}").close()

    info = psycopg.conninfo.conninfo_to_dict(url)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**{**info, "password": "wrong-" + uuid.uuid4().hex}).close()
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):  # not trust
        psycopg.connect(**{k: v for k, v in info.items() if k != "password"}, passfile=os.devnull).close()

    # a password stored as md5 (possible only by asking for it) cannot log in over TCP either
    probe, secret = f"md5_probe_{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4().hex}"
    live.psql(f"SET password_encryption = 'md5'; CREATE ROLE {probe} LOGIN PASSWORD '{secret}';", database="postgres")
    try:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**{**info, "user": probe, "password": secret, "dbname": "postgres"}).close()
    finally:
        live.psql(f"DROP ROLE {probe};", database="postgres")


def test_superuser_password_never_in_inspect_processes_state_or_logs(live: Live) -> None:
    secret = live.superuser_password
    inspect = subprocess.run(["docker", "inspect", live.container], capture_output=True, text=True, check=True)
    assert "POSTGRES_PASSWORD_FILE=" in inspect.stdout and secret not in inspect.stdout
    image = json.loads(inspect.stdout)[0]["Image"]
    assert secret not in subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True,
                                        check=True).stdout
    # every process's command line and environment, sampled through both `up`s (initdb ran in the first)
    assert len(live.processes) > 10 and not [line for line in live.processes if secret in line]
    now = subprocess.run(["ps", "axeww", "-o", "args="], capture_output=True, text=True, check=True).stdout
    assert secret not in now
    # (as the server's user: root in the container lacks the ptrace right to read it)
    server_env = subprocess.run(["docker", "exec", "-u", "postgres", live.container, "cat", "/proc/1/environ"],
                                capture_output=True, text=True, check=True).stdout
    assert "PGDATA=" in server_env and "POSTGRES_PASSWORD=" not in server_env and secret not in server_env
    logs = subprocess.run(["docker", "logs", live.container], capture_output=True, text=True, check=True)
    every_log = [*live.container_logs, logs.stdout + logs.stderr]
    assert any("initialization complete" in log for log in every_log)  # initdb's run is among them
    assert not [log for log in every_log if secret in log]
    assert not [log for log in live.logs if secret in log]
    assert_not_in_state(live.backend, secret)


# ------------------------------------------------------------------------------------------- 4: rotation


def changed_resources(events: list[auto.EngineEvent]) -> dict[tuple[str, str], set[str]]:
    """{(type, name): operations} of every resource the run did something to."""
    ops: dict[tuple[str, str], set[str]] = {}
    for event in events:
        if event.resource_pre_event is None:
            continue
        meta = event.resource_pre_event.metadata
        op = meta.op.value if hasattr(meta.op, "value") else str(meta.op)
        # The engine refreshes the default dynamic provider's own inputs now and then: bookkeeping, no
        # resource of the stack. A provider replaced (which would replace its resources) still counts.
        if meta.type.startswith("pulumi:providers:") and op == "update":
            continue
        if op not in ("same", "read"):
            ops.setdefault((meta.type, meta.urn.rsplit("::", 1)[-1]), set()).add(op)
    return ops


def data_snapshot(owner_url: str) -> dict[str, Any]:
    with psycopg.connect(owner_url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()]
        return {t: conn.execute(sql.SQL("SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), ''))"
                                        " FROM {} x").format(sql.Identifier(t))).fetchone()[0]  # type: ignore[index]
                for t in tables}


def rotate(live: Live, key: str, value: int) -> dict[tuple[str, str], set[str]]:
    live.stack.set_config(f"passwordRotation.{key}", auto.ConfigValue(str(value)), path=True)
    events: list[auto.EngineEvent] = []
    live.run(live.stack.up, on_event=events.append)
    return changed_resources(events)


def test_rotation_one_role_then_all_with_an_open_session_kept(live: Live) -> None:
    before = live.outputs()
    urls = before["connection_urls"]
    with psycopg.connect(urls["app"], autocommit=True) as conn:
        conn.execute("INSERT INTO organizations (name) VALUES ('rotation-probe')")
    data = data_snapshot(urls["owner"])

    # The documented sequence (docs/security.md, "Credential rotation"): the app's pool stays open across `up`.
    pool = psycopg.connect(urls["app"], autocommit=True)
    try:
        changed = rotate(live, "app", 1)
        assert changed == {
            (RANDOM_PASSWORD, "app-db-app-password"): {"create-replacement", "replace", "delete-replaced"},
            (ROLE, "app-db-app"): {"update"},
        }, changed
        after = live.outputs()
        new = after["connection_urls"]
        assert new["app"] != urls["app"] and {k: new[k] for k in new if k != "app"} == {
            k: urls[k] for k in urls if k != "app"}
        assert after["env"]["DATABASE_URL"] == new["app"] != before["env"]["DATABASE_URL"]
        assert after["env"]["POSTGRES_PASSWORD"] != before["env"]["POSTGRES_PASSWORD"]
        # open sessions carry on (PostgreSQL checks passwords at login only) ...
        pool.execute("INSERT INTO organizations (name) VALUES ('written-after-rotation')")
        # ... a new login with the old password is refused (28P01), with the new one it works
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(urls["app"]).close()
        with psycopg.connect(new["app"]) as conn:
            assert conn.execute("SELECT count(*) FROM organizations WHERE name = 'written-after-rotation'"
                                ).fetchone() == (1,)
            conn.execute("DELETE FROM organizations WHERE name = 'written-after-rotation'")
    finally:
        pool.close()
    assert data_snapshot(new["owner"]) == data

    changed = rotate(live, "all", 1)
    purposes = {"owner": "app-db-owner", "app": "app-db-app", "readonly": "app-db-readonly",
                "cleanup": "app-db-cleanup"}
    expected = {(RANDOM_PASSWORD, f"{n}-password"): {"create-replacement", "replace", "delete-replaced"}
                for n in purposes.values()} | {(ROLE, n): {"update"} for n in purposes.values()}
    # the migrations hold the owner's connection: updated in place, nothing re-run
    migrations = {k: v for k, v in changed.items() if k not in expected}
    assert migrations and all(ops == {"update"} and t.endswith("Migration") for (t, _), ops in migrations.items())
    assert {k: v for k, v in changed.items() if k in expected} == expected
    final = live.outputs()["connection_urls"]
    for purpose in RolePurpose:
        assert final[purpose] != new[purpose]
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(new[purpose]).close()
        with psycopg.connect(final[purpose]) as conn:
            conn.execute("SELECT 1")
    assert data_snapshot(final["owner"]) == data
    stored = live.psql("SELECT DISTINCT split_part(rolpassword, '$', 1) FROM pg_authid WHERE rolname LIKE 'ci\\_%'")
    assert stored.split() == ["SCRAM-SHA-256"]
    live.run(live.stack.preview, expect_no_changes=True)


# ------------------------------------------------------------------------------------------- 6: errors


URL_OR_SECRET = re.compile(r"postgres(?:ql)?://|password\s*=", re.I)


def assert_no_secret(output: str, *secrets: str) -> None:
    assert not URL_OR_SECRET.search(output), URL_OR_SECRET.search(output)
    for secret in secrets:
        assert secret not in output


def test_failed_connection_and_failed_migration_print_no_secret(live: Live, tmp_path: Path) -> None:
    urls = live.urls()
    owner = psycopg.conninfo.conninfo_to_dict(urls["owner"])
    wrong = f"wrong-{uuid.uuid4().hex}"
    roles = live.outputs()["roles"]

    # Failed connection: the owner's and the superuser's passwords changed behind Pulumi's back; refresh
    # connects with the ones in the state (the migrations as the owner, the provider and job as superuser).
    live.psql(f"ALTER ROLE {roles['owner']} PASSWORD '{wrong}'; ALTER ROLE postgres PASSWORD '{wrong}';")
    try:
        start = len(live.logs)
        with pytest.raises(auto.errors.CommandError):
            live.run(live.stack.refresh)
        output = "\n".join(live.logs[start:])
        assert "password authentication failed" in output
        assert_no_secret(output, wrong, owner["password"], live.superuser_password)
    finally:
        live.psql(f"ALTER ROLE {roles['owner']} PASSWORD '{owner['password']}';"
                  f" ALTER ROLE postgres PASSWORD '{live.superuser_password}';")

    # Failed migration: a file whose SQL fails; the error names it, and nothing secret.
    migrations = tmp_path / "sql"
    shutil.copytree(REPO / "sql", migrations)
    last = max(int(p.name[:3]) for p in migrations.glob("[0-9][0-9][0-9]_*.sql"))
    (migrations / f"{last + 1:03d}_broken.sql").write_text("SELECT 1 / 0;\n")
    (migrations / f"{last + 1:03d}_broken.down.sql").write_text("SELECT 1;\n")
    live.stack.set_config("migrationsDir", auto.ConfigValue(str(migrations)))
    try:
        start = len(live.logs)
        with pytest.raises(auto.errors.CommandError):
            live.run(live.stack.up)
        output = "\n".join(live.logs[start:])
        assert f"{last + 1:03d}_broken.sql" in output and "division by zero" in output
        assert_no_secret(output, owner["password"], live.superuser_password)
    finally:
        live.stack.remove_config("migrationsDir")
    live.run(live.stack.refresh)  # the repaired credentials work again
    live.run(live.stack.preview, expect_no_changes=True)


def test_failed_preflight_prints_no_secret(new_stack: StackFactory, local_postgres: Any) -> None:
    admin = local_postgres.address
    wrong = f"wrong-{uuid.uuid4().hex}"
    stack = new_stack(program, {
        "mode": auto.ConfigValue("external"), "externalHost": auto.ConfigValue(admin.host),
        "externalPort": auto.ConfigValue(str(admin.port)), "externalAdminUser": auto.ConfigValue(admin.user),
        "externalAdminPassword": auto.ConfigValue(wrong, secret=True), "externalSslMode": auto.ConfigValue("disable"),
    }, project=PROJECT)
    lines: list[str] = []
    with pytest.raises(auto.errors.CommandError) as failure:
        stack.preview(color="never", on_output=lines.append)
    output = "\n".join(lines) + str(failure.value)
    assert "password authentication failed" in output and "externalAdminPassword" in output
    assert_no_secret(output, wrong, admin.password)
