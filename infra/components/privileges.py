"""Privilege resources ordered per catalog row: the one place that says why each ordering exists.

PostgreSQL keeps an object's access list in one catalog row: the database's (`pg_database`), the
schema's (`pg_namespace`), a table's or a sequence's (`pg_class`, and its columns' in `pg_attribute`),
a routine's (`pg_proc`), a default-ACL entry (`pg_default_acl`: one row per owner, schema and object
kind). Two sessions changing the same row at once fail with "tuple concurrently updated" (XX000). The
engine creates, and deletes, resources that do not depend on each other in parallel, and the
postgresql provider's Grant and DefaultPrivileges revoke-then-grant each in their own session:
upstream bug pulumi/pulumi-postgresql#831 (cyrilgdn/terraform-provider-postgresql#178, fixes proposed
in #510 and #520, not merged). Users' usual workaround is `--parallel 1` on every command; here the
program orders exactly the resources that share a row instead, so no flag is needed and the others
run in parallel.

The orderings, and why:
- Two privilege resources on the same row: the later-declared one depends on the earlier one
  (`PrivilegeSequence`), so the engine creates them in declaration order and deletes them in reverse.
- A column grant shares its table's row: `REVOKE ALL` on a table drops that role's column grants
  too, so a column grant declared after its table's revoke must also run after it (and on update and
  destroy keep that order).
- An object grant without object names (every table of a schema) shares a row with each named
  relation of that schema.
- Privileges on objects a migration creates wait for the migrations (their components' `after`), and
  the first migration waits for the database's grants: not a row rule, the objects must exist.
`tests/unit/test_program_graph.py` checks the rule both ways: two privilege resources on one row are
ordered, and a privilege resource depends on no other privilege resource without sharing a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import pulumi

R = TypeVar("R", bound=pulumi.Resource)

# The catalog row a privilege resource rewrites, within the one application database:
# ("database",), ("schema", schema), ("relation", schema, name or "*"), ("routine", schema, name),
# ("default-acl", owner, schema, object kind).
Row = tuple[str, ...]

ALL_OBJECTS = "*"


def object_rows(object_type: str, schema: str, objects: Sequence[str]) -> list[Row]:
    """The rows a Grant on `objects` (none: all of the schema's) of `object_type` rewrites."""
    if object_type == "database":
        return [("database",)]
    if object_type == "schema":
        return [("schema", schema)]
    kind = "routine" if object_type in ("function", "procedure", "routine") else "relation"
    return [(kind, schema, name) for name in (objects or [ALL_OBJECTS])]


def default_acl_row(owner: str, schema: str, object_type: str) -> Row:
    return ("default-acl", owner, schema, object_type)


def rows_conflict(a: Row, b: Row) -> bool:
    """Same row, or a schema-wide object grant and a named object of that schema."""
    if a == b:
        return True
    return a[:2] == b[:2] and a[0] in ("relation", "routine") and ALL_OBJECTS in (a[2], b[2])


class PrivilegeSequence:
    """Hands out resource options that make a privilege resource wait for the last one declared on
    each catalog row it rewrites."""

    def __init__(self) -> None:
        self._last: dict[Row, pulumi.Resource] = {}

    def options(self, opts: pulumi.ResourceOptions, rows: Sequence[Row]) -> pulumi.ResourceOptions:
        """`opts` plus a dependency on the last privilege resource declared on any of `rows`."""
        before = {id(r): r for row in rows for seen, r in self._last.items() if rows_conflict(row, seen)}
        return pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=list(before.values())))

    def then(self, resource: R, rows: Sequence[Row]) -> R:
        """Records `resource` as the one the next privilege resource on `rows` waits for."""
        for row in rows:
            self._last[row] = resource
        return resource
