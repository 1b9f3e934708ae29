"""The Python SDK's dependency-cycle check, replaced by one whose cost does not grow with the chain.

Before it records that a resource depends on another (an input's resource or `depends_on`), the
pinned SDK (`pulumi.runtime.resource_cycle_breaker.declare_dependency`, called from
`pulumi.runtime.rpc._add_dependency`) walks everything the other resource depends on, transitively,
with nested generators: for a chain of N migrations that is N^2 steps in all, and a chain longer than
Python's recursion limit raises RecursionError. The chain itself is needed (the engine applies and
reverts in its order), so the check is what changes here.

`declare_dependency` below keeps the SDK's contract (same arguments, False for a dependency that would
close a cycle, the edge recorded in the same attribute the SDK reads) and keeps a topological rank per
resource (dynamic topological order, Pearce and Kelly): every resource ranks above everything it
depends on. A new dependency from a higher-ranked resource on a lower-ranked one cannot close a cycle
and costs O(1): that is every dependency of a chain declared in order. Any other dependency is checked
by an iterative walk limited to the ranks in between, and ranks are then moved up where needed.
`tests/unit/test_dependency_order.py` fails when the pinned SDK's internals relied on here change.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from pulumi.runtime import resource_cycle_breaker, rpc

if TYPE_CHECKING:
    from pulumi import Resource

SDK_DECLARE_DEPENDENCY = resource_cycle_breaker.declare_dependency


class DependencyOrder:
    """Ranks and reverse edges of the resources seen by `declare_dependency`."""

    def __init__(self) -> None:
        self._rank: dict[Resource, int] = {}
        self._dependents: dict[Resource, list[Resource]] = {}
        self._next = 0
        self.walks = 0  # dependencies that needed a walk (the tests count them)

    def rank(self, resource: Resource) -> int:
        if resource not in self._rank:
            self._rank[resource] = self._next
            self._next += 1
        return self._rank[resource]

    def declare_dependency(self, from_resource: Resource, to_resource: Resource) -> bool:
        """Records that `from_resource` depends on `to_resource`, unless that closes a cycle (then False)."""
        if from_resource is to_resource:
            return False
        low = self.rank(to_resource)  # ranked first: a resource seen here first ranks above its dependency
        high = self.rank(from_resource)
        if high <= low:
            self.walks += 1
            if self._reaches(to_resource, from_resource):
                return False
            self._move_up(from_resource, low + 1)
        resource_cycle_breaker._add_dep(from_resource, to_resource)
        self._dependents.setdefault(to_resource, []).append(from_resource)
        return True

    def _reaches(self, start: Resource, target: Resource) -> bool:
        """Whether `target` is among what `start` depends on, transitively (iterative; what ranks
        below `target` cannot lead to it and is not walked)."""
        floor = self._rank[target]
        seen = {start}
        todo = [start]
        while todo:
            node = todo.pop()
            if node is target:
                return True
            for dep in resource_cycle_breaker._deps(node):
                if dep not in seen and self._rank.get(dep, floor) >= floor:
                    seen.add(dep)
                    todo.append(dep)
        return False

    def _move_up(self, resource: Resource, rank: int) -> None:
        """Gives `resource` at least `rank`, and every resource depending on it a higher one still."""
        queue = deque([(resource, rank)])
        while queue:
            node, wanted = queue.popleft()
            if self._rank[node] >= wanted:
                continue
            self._rank[node] = wanted
            self._next = max(self._next, wanted + 1)
            queue.extend((dependent, wanted + 1) for dependent in self._dependents.get(node, ()))


_order = DependencyOrder()


def install() -> DependencyOrder:
    """Makes the SDK use the ranked check (idempotent); call before the first resource is declared."""
    rpc.declare_dependency = _order.declare_dependency  # type: ignore[assignment]
    resource_cycle_breaker.declare_dependency = _order.declare_dependency  # type: ignore[assignment]
    return _order
