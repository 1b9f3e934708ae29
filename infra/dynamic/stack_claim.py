"""One stack per database on a shared server: the claim a stack takes before it creates anything there.

Two stacks pointing at one server with the same `databaseName` or `rolePrefix` (two teams' CI, a copied
config) would otherwise both create the same roles and database at once: each fails on whichever
objects the other created first, possibly both, with the postgresql provider's bare "already exists".
The claim is a NOLOGIN role `<owner role>_claim` whose comment names the stack, the database and the
roles, created under an advisory lock (one for all claims). Creating a role is atomic and
cluster-wide like the objects it guards, and it is the only such object an admin with CREATEROLE can
create before the database exists. The admin provider waits for the claim, so the stack that loses
creates nothing and says who holds the names. A stack whose state holds its claim never checks again;
one that predates claims simply takes its claim on its next `up`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import psycopg
import pulumi
from psycopg import sql
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, ReadResult, Resource, UpdateResult

from infra.connection import WIRE_KEYS, Connection, conninfo
from infra.dynamic.base import DiffingProvider, ProviderFailure, password_kept_secret, reported_create

APPLICATION_NAME = "pulumi-stack-claim"
MARK = "customer-insights stack claim"


def claim_role(roles: list[str]) -> str:
    return f"{roles[0]}_claim"


def comment(props: dict[str, Any]) -> str:
    return f"{MARK}: stack={props['stack']} database={props['database']} roles={','.join(props['roles'])}"


def _parse(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.removeprefix(f"{MARK}: ").split() if "=" in part)


def conflict(conn: psycopg.Connection[Any], props: dict[str, Any]) -> str | None:
    """Why `props['stack']` must not take the names, or None: a claim of another stack on either."""
    rows = conn.execute(
        "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
        "WHERE shobj_description(oid, 'pg_authid') LIKE %s", (f"{MARK}: %",),
    ).fetchall()
    for role, text in rows:
        held = _parse(text)
        if held.get("stack") == props["stack"]:
            continue
        shared = sorted(set(props["roles"]) & set(held.get("roles", "").split(",")))
        if held.get("database") == props["database"] or shared:
            what = [f"database {props['database']!r}"] if held.get("database") == props["database"] else []
            what += [f"role{'s' if len(shared) > 1 else ''} {', '.join(shared)}"] if shared else []
            return (
                f"The {' and the '.join(what)} on this server belong to another Pulumi stack, {held.get('stack')!r} "
                f"(its claim is the NOLOGIN role {role}: database {held.get('database')!r}, roles "
                f"{held.get('roles')}). Two stacks must not share a database or roles: "
                "give this stack its own names (`pulumi config set databaseName <name>` and "
                "`pulumi config set rolePrefix <prefix>`), or run one stack per database. If that stack was "
                f"destroyed with keepDataOnDestroy and this one should take its data over, DROP ROLE {role} first. "
                "Nothing was created."
            )
    return None


def _connect(props: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(conninfo(props, application_name=APPLICATION_NAME))


class StackClaimProvider(DiffingProvider):
    replace_keys: ClassVar[frozenset[str]] = frozenset({"roles", "database", "stack"})
    # The admin's connection details change nothing on the server (a rotated admin password).
    ignored_keys: ClassVar[frozenset[str]] = frozenset(WIRE_KEYS)

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """`preview` and `up` of a stack without a claim yet: refuse names another stack holds."""
        if olds:
            return CheckResult(news, [])
        with _connect(news) as conn:
            refusal = conflict(conn, news)
        return CheckResult(news, [CheckFailure("", refusal)] if refusal else [])

    @reported_create
    def create(self, props: dict[str, Any]) -> CreateResult:
        role = claim_role(props["roles"])
        with _connect(props) as conn, conn.transaction():
            # One lock for every claim: two stacks sharing only the database or only a role are serialised too.
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (MARK,))
            if refusal := conflict(conn, props):
                raise StackClaimRefused(refusal)
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
            conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(role), sql.Literal(comment(props))))
        return CreateResult(id_=role, outs=props)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=news)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        if props.get("keep_on_destroy"):
            return  # the kept database and roles stay attributed to this stack
        with _connect(props) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(id_)))
            conn.commit()

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with _connect(props) as conn:
            found = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (id_,)).fetchone()
        return ReadResult(id_=id_, outs=props) if found else ReadResult(id_="", outs={})


class StackClaimRefused(ProviderFailure):
    """Another stack claimed the names between this stack's preview and its `up`."""


class StackClaim(Resource, module="db", name="StackClaim"):
    """This stack's claim on its database and role names on a shared server (see the module)."""

    def __init__(
        self,
        resource_name: str,
        *,
        admin: Connection,
        stack: str,
        database: str,
        roles: list[str],  # owner first
        keep_on_destroy: bool,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {**admin.provider_inputs(), "stack": stack, "database": database, "roles": roles,
                 "keep_on_destroy": keep_on_destroy}
        super().__init__(StackClaimProvider(), resource_name, props, password_kept_secret(opts))
