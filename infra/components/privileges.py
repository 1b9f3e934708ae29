"""Privilege resources declared one after another, never side by side.

PostgreSQL keeps an object's access list in one catalog row (the database's, the schema's, a
table's, a default-ACL entry). Two sessions changing that row at once fail with "tuple concurrently
updated" (XX000). The engine creates, and deletes, resources that do not depend on each other in
parallel, and the postgresql provider's Grant and DefaultPrivileges revoke-then-grant each in their
own session: upstream bug pulumi/pulumi-postgresql#831 (cyrilgdn/terraform-provider-postgresql#178,
fixes proposed in #510 and #520, not merged). Users' usual workaround is `--parallel 1` on every
command; here the program orders the resources instead, so no flag is needed.

Every privilege resource depends on the one declared before it: the engine creates them in
declaration order and deletes them in reverse, one at a time. A chain rather than per-object
ordering: it has no object bookkeeping to get wrong, and twenty grants at a few milliseconds each
cost nothing noticeable. `tests/unit/test_program_graph.py` fails if two privilege resources on the
same object could run at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import pulumi

R = TypeVar("R", bound=pulumi.Resource)


class PrivilegeSequence:
    """Hands out resource options that make each privilege resource wait for the previous one."""

    def __init__(self, after: Sequence[pulumi.Resource] = ()) -> None:
        self._last: list[pulumi.Resource] = list(after)

    def options(self, opts: pulumi.ResourceOptions) -> pulumi.ResourceOptions:
        """`opts` plus a dependency on the privilege resource declared last."""
        return pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=list(self._last)))

    def then(self, resource: R) -> R:
        """Records `resource` as the one the next privilege resource waits for."""
        self._last = [resource]
        return resource
