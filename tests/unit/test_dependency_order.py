"""infra.dependency_order: the program's replacement of the SDK's dependency-cycle check."""

from __future__ import annotations

import hashlib
import inspect
import itertools
import random
import sys
from importlib import metadata

import pytest
from pulumi.runtime import resource_cycle_breaker, rpc

from infra import dependency_order
from infra.dependency_order import SDK_DECLARE_DEPENDENCY, DependencyOrder

pytestmark = pytest.mark.unit

# What the replacement relies on, as read in pulumi 3.272.0. A new SDK fails here: read its
# resource_cycle_breaker.py and rpc._add_dependency again, then update these (or drop the replacement
# if the SDK's own check no longer walks the chain).
PINNED_SDK = "3.272.0"
CYCLE_BREAKER_SHA256 = "58bcb372e5e36ee03b06ca0eaf28dcea9696777d5c047b9ebf9bcfe98595c516"
ADD_DEPENDENCY_SHA256 = "4566782211f464dccefa999e9c431dda426520ba6c6770662ba9a14eed1b8791"


class Node:
    """Stands for a Resource: the check only hashes it and reads/writes one attribute on it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_pinned_sdk_internals_are_the_ones_replaced() -> None:
    assert metadata.version("pulumi") == PINNED_SDK
    assert _sha(inspect.getsource(resource_cycle_breaker)) == CYCLE_BREAKER_SHA256
    assert _sha(inspect.getsource(rpc._add_dependency)) == ADD_DEPENDENCY_SHA256
    # The call site looks the function up in rpc's module globals at call time: replacing it there works.
    assert "declare_dependency(from_resource, res)" in inspect.getsource(rpc._add_dependency)
    assert resource_cycle_breaker._DEPENDENCIES_PROPERTY == "_direct_computed_dependencies"


def test_install_replaces_the_check_the_sdk_calls() -> None:
    order = dependency_order.install()
    assert rpc.declare_dependency == order.declare_dependency
    assert dependency_order.install() is order  # idempotent


def test_edges_are_recorded_where_the_sdk_reads_them() -> None:
    order = DependencyOrder()
    a, b = Node("a"), Node("b")
    assert order.declare_dependency(b, a) is True
    assert resource_cycle_breaker._deps(b) == {a}
    assert b._direct_computed_dependencies == {a}


def test_a_long_chain_needs_no_walk_and_no_recursion() -> None:
    order = DependencyOrder()
    nodes = [Node(f"m{i}") for i in range(sys.getrecursionlimit() * 5)]
    for previous, node in itertools.pairwise(nodes):
        assert order.declare_dependency(node, previous) is True
    assert order.walks == 0
    # The SDK's own check on the same chain: what made the program fail past about 1,000 migrations.
    with pytest.raises(RecursionError):
        SDK_DECLARE_DEPENDENCY(Node("next"), nodes[-1])
    # Closing the chain into a cycle is still refused, by an iterative walk.
    assert order.declare_dependency(nodes[0], nodes[-1]) is False
    assert order.walks == 1


def test_a_dependency_on_itself_is_a_cycle() -> None:
    a, same = Node("a"), Node("same")
    assert DependencyOrder().declare_dependency(a, a) is False
    assert SDK_DECLARE_DEPENDENCY(same, same) is False


@pytest.mark.parametrize("seed", range(20))
def test_same_answers_as_the_sdk_on_random_graphs(seed: int) -> None:
    """Random dependencies in random order (back edges too): every answer equals the SDK's, and the
    recorded graphs are equal."""
    rng = random.Random(seed)
    count = 40
    ours = [Node(f"o{i}") for i in range(count)]
    theirs = [Node(f"t{i}") for i in range(count)]
    order = DependencyOrder()
    for _ in range(300):
        i, j = rng.randrange(count), rng.randrange(count)
        assert order.declare_dependency(ours[i], ours[j]) == SDK_DECLARE_DEPENDENCY(theirs[i], theirs[j]), (i, j)
    for o, t in zip(ours, theirs, strict=True):
        names = [{n.name[1:] for n in resource_cycle_breaker._deps(r)} for r in (o, t)]
        assert names[0] == names[1]


def test_the_program_declares_1100_chained_migrations(tmp_path) -> None:
    """The real __main__.py under mocks with 1,100 files: the SDK's own check raised RecursionError
    at about 1,000 (the real CLI at this size: bench/README.md)."""
    from devsupport.program_mocks import MIGRATION, ProgramHarness
    from tests.unit.test_program_graph import CONTAINER_CONFIG

    count = 1100
    for n in range(1, count + 1):
        (tmp_path / f"{n:04d}_t{n}.sql").write_text(f"CREATE TABLE t{n} (id int);\n")
    run = ProgramHarness().run({**CONTAINER_CONFIG, "migrationsDir": str(tmp_path), "acceptChecksums": "[]"})
    migrations = run.of_type(MIGRATION)
    assert len(migrations) == count
    urns = [m.urn for m in migrations]
    assert all(urns[i - 1] in migrations[i].dependencies for i in range(1, count))
