"""The program's side of the preview rehearsal, on plain values: where the scratch copy lives, what
the target has really applied, and the library's `rehearse` run there (docs/rehearsal.md).

The Migrations component hands over plain values once the preview knows them (a `RehearsalPlan`);
nothing here knows Pulumi, so it runs in an executor thread and is tested against real PostgreSQL.
Every session on the target is read-only with a statement and a lock timeout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from infra.migrate import MigrationFile, MigrationsError, tracking
from infra.migrate.rehearsal import Rehearsal, rehearse
from infra.migrate.scratch import ScratchServer, existing_server, local_container, scratch_database
from infra.migrate.session import CONNECT_TIMEOUT, StatementLimits

APPLICATION_NAME = "pulumi-rehearsal"
# The prefix of the one machine-readable diagnostic per rehearsed migration (scripts/preview_comment.py).
REHEARSAL_JSON = "rehearsal-json: "
Log = Callable[[str], None]


class TargetUnreadable(MigrationsError):
    """The target server was there but could not be read; the message says what failed."""


@dataclass(frozen=True)
class Endpoint:
    """One database as one user, plain values (the password is never printed: see __repr__)."""

    host: str
    port: int
    database: str
    user: str
    password: str = field(repr=False)
    sslmode: str = "prefer"

    def conninfo(self, database: str | None = None, *, labelled: bool = True, **options: Any) -> str:
        """`labelled`: with this program's application_name (the library labels its own sessions)."""
        if labelled:
            options["application_name"] = APPLICATION_NAME
        return make_conninfo(host=self.host, port=self.port, dbname=database or self.database, user=self.user,
                             password=self.password, sslmode=self.sslmode, connect_timeout=CONNECT_TIMEOUT,
                             **options)


@dataclass(frozen=True)
class RehearsalPlan:
    owner: str  # the role `up` runs the migrations as
    database: str  # the target database
    roles: tuple[str, ...]  # every role the stack makes: an empty scratch database gets them (NOLOGIN)
    image: str  # of a local scratch container
    limits: StatementLimits
    read_timeout_ms: int
    # The server's admin on its admin database; None while unknown (the server does not exist yet).
    admin: Endpoint | None
    # Who reads the target database (its schema, sizes and data); None while unknown.
    reader: Endpoint | None
    # The stack's own server takes the scratch databases (container mode: its superuser is `admin`).
    scratch_on_server: bool = False
    scratch_url: str | None = field(default=None, repr=False)  # a throwaway server's superuser


@dataclass(frozen=True)
class Outcome:
    rehearsal: Rehearsal | None  # None: nothing left to run (every pending file is already applied)
    from_files_alone: bool  # the target database does not exist yet: the files ran on an empty database
    already_applied: tuple[str, ...] = ()  # pending in the state, recorded on the target: `up` adopts them
    scratch: str = ""  # where the rehearsal ran (no password)


def _read_only(endpoint: Endpoint, timeout_ms: int, database: str | None = None) -> psycopg.Connection[Any]:
    options = (f"-c default_transaction_read_only=on -c statement_timeout={int(timeout_ms)} "
               f"-c lock_timeout={int(timeout_ms)}")
    return psycopg.connect(endpoint.conninfo(database, options=options), autocommit=True)


def target_state(plan: RehearsalPlan) -> dict[str, tracking.AppliedMigration] | None:
    """The target's tracking table by version ({} without one); None when the target database or
    its owner role does not exist yet. Read-only sessions only."""
    if plan.admin is None or plan.reader is None:
        return None
    try:
        with _read_only(plan.admin, plan.read_timeout_ms) as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %s),"
                " EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", (plan.database, plan.owner)).fetchone()
        if not row or not all(row):
            return None
        with _read_only(plan.reader, plan.read_timeout_ms, plan.database) as conn:
            return tracking.fetch_all(conn)
    except psycopg.Error as exc:
        raise TargetUnreadable(f"cannot read the target {plan.database} on {plan.admin.host}:{plan.admin.port}: "
                               f"{_scrubbed(exc, plan)}") from exc


def _scrubbed(exc: BaseException, plan: RehearsalPlan) -> str:
    text = " ".join(str(exc).split())
    for secret in (plan.admin.password if plan.admin else "", plan.reader.password if plan.reader else ""):
        if secret:
            text = text.replace(secret, "********")
    return text


@contextlib.contextmanager
def scratch_server(plan: RehearsalPlan, *, target_exists: bool, log: Log) -> Iterator[ScratchServer]:
    """The configured scratch server; else the stack's own server when it is running and takes
    scratch databases; else a local container of the image (roles are cluster-wide: creating the
    stack's roles on its own server before `up` would make `up` fail to create them)."""
    if plan.scratch_url:
        yield existing_server(plan.scratch_url)
    elif target_exists and plan.scratch_on_server and plan.admin is not None:
        yield existing_server(plan.admin.conninfo(labelled=False))
    else:
        with local_container(plan.image, log=log) as server:
            yield server


def run(plan: RehearsalPlan, chain: Sequence[MigrationFile], pending: Collection[str], log: Log) -> Outcome:
    """Rehearses the files of `chain` (in order) whose version is in `pending`, as `up` will run them.

    On the target's schema when the target exists (pending files it already records are adopted by
    `up`, not run: they are left out). Without a target database the files ran on an empty one: then
    every file of `chain` up to the last pending one is rehearsed, so the pending ones meet their tables.
    """
    applied = target_state(plan)
    if applied is None:
        last = max(i for i, m in enumerate(chain) if m.version in pending)
        files = list(chain[: last + 1])
        adopted: tuple[str, ...] = ()
    else:
        files = [m for m in chain if m.version in pending and m.version not in applied]
        adopted = tuple(m.filename for m in chain if m.version in pending and m.version in applied)
    if not files:
        return Outcome(None, applied is None, adopted)
    target = plan.reader.conninfo(labelled=False) if applied is not None and plan.reader is not None else None
    with scratch_server(plan, target_exists=applied is not None, log=log) as server, scratch_database(
            server, schema_from=target, owner=plan.owner, roles=plan.roles, log=log) as scratch:
        result = rehearse(files, scratch=scratch, run_as=plan.owner, target=target, limits=plan.limits,
                          read_timeout_ms=plan.read_timeout_ms, log=log, scratch_description=server.description)
        return Outcome(result, applied is None, adopted, server.description)
