"""`pulumi up` and `pulumi destroy` of the whole program at the engine's default parallelism, again
and again: no "tuple concurrently updated" from grants on one object (pulumi/pulumi-postgresql#831).

The race is timing-dependent, so one passing cycle proves little: several cycles at the shipped
schema, and one with 300 migrations, where the engine has the most independent work in flight
(it failed there twice out of two before the privilege resources were ordered).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devsupport.local_postgres import free_port
from tests.e2e.conftest import docker_leftovers
from tests.e2e.test_full_stack import stack_of

pytestmark = pytest.mark.e2e

CYCLES = 3
MANY_MIGRATIONS = 300


def with_filler_migrations(sql_dir: Path, target: Path, total: int) -> Path:
    """A copy of `sql_dir` topped up to `total` migrations, each creating (and reverting) one table."""
    shutil.copytree(sql_dir, target)
    shipped = sorted(p for p in target.glob("*.sql") if not p.name.endswith(".down.sql"))
    for version in range(len(shipped) + 1, total + 1):
        (target / f"{version:03d}_filler_{version}.sql").write_text(f"CREATE TABLE filler_{version} (id int);\n")
        (target / f"{version:03d}_filler_{version}.down.sql").write_text(f"DROP TABLE filler_{version};\n")
    return target


def up_and_destroy(stack) -> None:
    stack.up(color="never")
    destroy = stack.destroy(color="never")
    assert "concurrently updated" not in destroy.stdout
    assert set(destroy.summary.resource_changes or {}) == {"delete"}
    assert docker_leftovers(stack.name) == {"container": [], "volume": [], "network": []}


def test_up_and_destroy_repeatedly_at_default_parallelism(provider_plugins, new_stack):
    stack = stack_of(new_stack, {"hostPort": free_port()})
    for _ in range(CYCLES):
        up_and_destroy(stack)


def test_up_and_destroy_with_300_migrations(provider_plugins, new_stack, tmp_path):
    repo = Path(__file__).resolve().parents[2]
    migrations = with_filler_migrations(repo / "sql", tmp_path / "sql", MANY_MIGRATIONS)
    stack = stack_of(new_stack, {"hostPort": free_port(), "migrationsDir": str(migrations)})
    up = stack.up(color="never")
    assert len(up.outputs["migrations"].value) == MANY_MIGRATIONS
    destroy = stack.destroy(color="never")
    assert "concurrently updated" not in destroy.stdout
    assert destroy.summary.resource_changes.get("delete", 0) > MANY_MIGRATIONS
    assert docker_leftovers(stack.name) == {"container": [], "volume": [], "network": []}
