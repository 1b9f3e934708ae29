"""The real Pulumi engine through the Automation API: a file backend in a temporary directory and a
fresh stack per test, running inline programs (Pulumi's Python SDK serves them to the engine)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pulumi import automation as auto

from devsupport.local_postgres import ServerAddress
from devsupport.versions import pulumi_bin_dir
from infra.connection import Connection
from scripts.stack import missing_plugins, workspace_env
from tests.e2e.processes import describe, reap, wait_for_pulumi_to_exit
from tests.helpers import docker_output

REPO = Path(__file__).resolve().parents[2]
PROJECT = "customer-insights-e2e"
PASSPHRASE = "e2e-test-passphrase"


@pytest.fixture(autouse=True)
def no_pulumi_process_left() -> Iterator[None]:
    """After each test, nothing the Pulumi CLI started in this session (the suite's) is still running:
    a CLI that was killed leaves its plugins behind. They are reaped, and the test fails naming them."""
    yield
    if left := wait_for_pulumi_to_exit(os.getsid(0)):
        found = describe(left)
        reap(left)
        pytest.fail("Pulumi processes left running after the test (reaped now):\n  " + "\n  ".join(found),
                    pytrace=False)


@pytest.fixture(scope="session")
def pulumi_cli() -> auto.PulumiCommand:
    """The CLI the bootstrap built. Missing CLI is a failure, not a skip: CI bootstraps first."""
    bin_dir = pulumi_bin_dir()
    if not (bin_dir / "pulumi").exists() or not (bin_dir / "pulumi-resource-pulumi-python").exists():
        pytest.fail(f"No Pulumi CLI in {bin_dir}: run `bash bootstrap/bootstrap.sh` first", pytrace=False)
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    return auto.PulumiCommand(root=str(bin_dir.parent), skip_version_check=True)


class StackFactory:
    """Creates stacks of inline programs in one temporary file backend and destroys them after."""

    def __init__(self, cli: auto.PulumiCommand, backend: Path) -> None:
        self.cli = cli
        self.backend = backend
        self.stacks: list[auto.Stack] = []

    def __call__(self, program: Callable[[], None], config: dict[str, auto.ConfigValue] | None = None,
                 project: str = PROJECT) -> auto.Stack:
        env = workspace_env(f"file://{self.backend}")
        env["PULUMI_CONFIG_PASSPHRASE"] = PASSPHRASE
        opts = auto.LocalWorkspaceOptions(
            env_vars=env,
            pulumi_command=self.cli,
            project_settings=auto.ProjectSettings(name=project, runtime="python",
                                                  backend=auto.ProjectBackend(url=f"file://{self.backend}")),
        )
        stack = auto.create_stack(f"t{uuid.uuid4().hex[:10]}", project_name=project, program=program, opts=opts)
        if config:
            stack.set_all_config(config)
        self.stacks.append(stack)
        return stack


def require_provider_plugins() -> None:
    """The docker/postgresql/random plugins the bootstrap builds: missing is a failure, not a skip."""
    if missing := missing_plugins():
        pytest.fail(f"provider plugins not installed ({', '.join(missing)}): run `bash bootstrap/bootstrap.sh`",
                    pytrace=False)


@pytest.fixture
def provider_plugins(pulumi_cli: auto.PulumiCommand) -> None:
    require_provider_plugins()


def program_at(commit: str, directory: Path) -> Path:
    """The repository as it was at `commit`, extracted into `directory` (an earlier program to upgrade from)."""
    directory.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit], capture_output=True,
                             check=False)
    assert archive.returncode == 0, f"git archive {commit}: {archive.stderr.decode()}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(directory, filter="data")
    return directory


def docker_leftovers(stack_name: str) -> dict[str, list[str]]:
    """Containers, volumes and networks of a stack: labelled with it, attached to them, or named after it."""
    containers = set(docker_output("ps", "-aq", "--filter", f"label=com.customer-insights.stack={stack_name}").split())
    containers |= {c for c in docker_output("ps", "-aq").split()
                   if stack_name in docker_output("inspect", "--format", "{{.Name}}", c)}
    labelled = f"label=com.customer-insights.stack={stack_name}"
    volumes = set(docker_output("volume", "ls", "-q", "--filter", labelled).split())
    networks: set[str] = set()
    for container in containers:
        info = json.loads(docker_output("inspect", container))[0]
        volumes |= {m["Name"] for m in info.get("Mounts", []) if m.get("Type") == "volume"}
        networks |= set((info.get("NetworkSettings") or {}).get("Networks") or {}) - {"bridge", "host", "none"}
    volumes |= {v for v in docker_output("volume", "ls", "-q").split() if stack_name in v}
    networks |= {n for n in docker_output("network", "ls", "--format", "{{.Name}}").split() if stack_name in n}
    return {"container": sorted(containers), "volume": sorted(volumes), "network": sorted(networks)}


def remove_docker_leftovers(stack_name: str) -> list[str]:
    """Removes what `docker_leftovers` finds (containers first); returns what it removed."""
    found = docker_leftovers(stack_name)
    removed = []
    for kind, command in (("container", ["rm", "-f", "-v"]), ("volume", ["volume", "rm", "-f"]),
                          ("network", ["network", "rm"])):
        for name in found[kind]:
            docker_output(*command, name)
            removed.append(f"{kind} {name}")
    return removed


@pytest.fixture
def new_stack(pulumi_cli: auto.PulumiCommand, tmp_path: Path) -> Iterator[StackFactory]:
    backend = tmp_path / "state"
    backend.mkdir()
    factory = StackFactory(pulumi_cli, backend)
    yield factory
    for stack in factory.stacks:
        clean_up_stack(stack)


def clean_up_stack(stack: auto.Stack) -> list[str]:
    """Destroys `stack`; when destroy fails, removes what it created in Docker and says so.

    A failed test must still leave nothing behind. Returns what the fallback removed.
    """
    removed: list[str] = []
    try:
        stack.destroy(color="never")
    except auto.errors.CommandError as exc:
        print(f"cleanup: destroy of {stack.name} failed: {exc}", file=sys.stderr)
        if shutil.which("docker"):
            removed = remove_docker_leftovers(stack.name)
            print(f"cleanup: removed by label/name instead: {', '.join(removed) or 'nothing'}", file=sys.stderr)
    stack.workspace.remove_stack(stack.name, force=True)
    return removed


def program_connection(plain: dict[str, Any]) -> Connection:
    """The `Connection` a test program passes for a database described as a plain dict (wire keys)."""
    return Connection(host=plain["host"], port=plain["port"], database=plain["dbname"], user=plain["user"],
                      password=plain["password"], sslmode=plain.get("sslmode") or "prefer")


def assert_not_in_state(backend: Path, *secrets: str) -> None:
    """No file of the backend (state, history, backups) holds any of `secrets` in plaintext."""
    files = [p for p in backend.rglob("*") if p.is_file()]
    assert files, f"no state files under {backend}"
    for path in files:
        content = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content, f"plaintext secret in {path}"


@pytest.fixture
def owner_role_db(pg_server: ServerAddress) -> Iterator[dict[str, object]]:
    """A fresh database owned by a fresh non-superuser login role, as DatabaseAndRoles makes them.

    Yields the migration connection inputs (host, port, dbname, user, password, sslmode).
    """
    suffix = uuid.uuid4().hex[:10]
    role, database, password = f"owner_{suffix}", f"db_{suffix}", f"pw-{uuid.uuid4().hex}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} NOSUPERUSER NOCREATEDB NOCREATEROLE").format(
            sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(role)))
    yield {"host": pg_server.host, "port": pg_server.port, "dbname": database, "user": role,
           "password": password, "sslmode": "disable"}
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def sql_copy(tmp_path: Path) -> Path:
    """A writable copy of sql/, for tests that add, edit or break migration files."""
    target = tmp_path / "sql"
    shutil.copytree(REPO / "sql", target)
    return target
