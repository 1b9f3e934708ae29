"""The files in sql/, applied in order as a chain of dependent resources."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pulumi

from infra import rehearsal
from infra.connection import Connection
from infra.dynamic.migration import Migration
from infra.dynamic.migration_checkpoint import MigrationCheckpoint
from infra.migrate import Checkpoint, MigrationFile, MigrationsError, StatementLimits, split_at_checkpoint
from infra.migrate.rehearsal import MigrationTrace, Rehearsal, StatementTrace
from infra.migrate.review import Review, reconcile, review_migration
from infra.rehearsal import Endpoint, RehearsalPlan


@dataclass
class MigrationsArgs:
    # Loaded and validated once by the program (`infra.config.checked_migrations`), in version order.
    migrations: Sequence[MigrationFile]
    # Where they were read from: the review uses the .squawk.toml found from there upwards, as CI's squawk does.
    directory: str
    connection: Connection  # as the owner role, never a superuser
    accept_checksums: frozenset[str] = field(default_factory=frozenset)
    keep_data_on_destroy: bool = False
    # Apply a pending file numbered below the highest applied version (refused by default).
    allow_out_of_order: bool = False
    # How the program words accepting what the library refuses (`infra.config.migration_fixes`).
    fixes: Mapping[str, str] = field(default_factory=dict)
    # What every statement runs under: lock timeout, retries on lock_not_available, statement timeout.
    limits: StatementLimits = field(default_factory=StatementLimits)
    # What must exist first (the database, its roles and grants). The first migration depends on
    # these directly, so the state records it and destroy reverts the schema before revoking them.
    after: list[pulumi.Resource] = field(default_factory=list)
    # `pulumi preview` rehearses the pending migrations on a scratch database (None: it does not).
    rehearsal: RehearsalArgs | None = None
    # sql/checkpoint.json (`infra.config.checked_checkpoint`): the files up to it are one resource.
    checkpoint: Checkpoint | None = None


@dataclass
class RehearsalArgs:
    """How `pulumi preview` rehearses the pending migrations (docs/rehearsal.md)."""

    # The server's administrator on its admin database: says whether the target database exists yet.
    admin: Connection
    # Every role the stack makes (the owner first): an empty scratch database gets them, NOLOGIN.
    roles: Sequence[str]
    image: str  # of a local scratch container: the first preview, or external mode without scratch_url
    limits: StatementLimits
    read_timeout_ms: int = 10000
    # Container mode: the stack's own server takes the scratch databases (admin is its superuser).
    scratch_on_server: bool = False
    # The admin may read every table of the target (a superuser); else the owner role reads it.
    admin_reads_target: bool = False
    scratch_url: pulumi.Input[str] | None = None  # secret: a throwaway server's superuser URL


async def _plain(value: pulumi.Input[Any]) -> Any:
    """The value of an input during the preview; None while it is unknown (not created yet)."""
    output = pulumi.Output.from_input(value)
    return await output.future() if await output.is_known() else None


async def _endpoint(connection: Connection) -> Endpoint | None:
    parts = [await _plain(x) for x in (connection.host, connection.port, connection.database, connection.user,
                                       connection.password)]
    if any(p is None for p in parts):
        return None
    host, port, database, user, password = parts
    return Endpoint(str(host), int(port), str(database), str(user), str(password), connection.sslmode)


async def _plan(owner: Connection, args: RehearsalArgs) -> RehearsalPlan:
    admin = await _endpoint(args.admin)
    owner_endpoint = await _endpoint(owner)
    database = await _plain(owner.database)
    reader = owner_endpoint
    if args.admin_reads_target and admin is not None and database is not None:
        reader = dataclasses.replace(admin, database=str(database))
    url = await _plain(args.scratch_url) if args.scratch_url is not None else None
    return RehearsalPlan(
        owner=str(args.roles[0]), database=str(database or ""), roles=tuple(args.roles), image=args.image,
        limits=args.limits, read_timeout_ms=args.read_timeout_ms, admin=admin,
        reader=reader if database is not None else None, scratch_on_server=args.scratch_on_server,
        scratch_url=str(url) if url else None,
    )


def _rehearsal_json(result: Rehearsal, trace: MigrationTrace, outcome: rehearsal.Outcome) -> str:
    whole = result.to_dict()
    entry = next(m for m in whole["migrations"] if m["filename"] == trace.filename)
    return rehearsal.REHEARSAL_JSON + json.dumps({
        "migration": entry, "calibration": whole["calibration"], "target_read": whole["target_read"],
        "target_note": whole["target_note"], "scratch": outcome.scratch,
        "from_files_alone": outcome.from_files_alone,
    }, sort_keys=True, separators=(",", ":"))


def _log_rehearsal(resource: pulumi.CustomResource, result: Rehearsal, trace: MigrationTrace,
                   outcome: rehearsal.Outcome) -> list[str]:
    """Logs the file's rehearsal on its resource; returns its failures, each naming file and line."""
    head, *statements = trace.lines()
    pulumi.log.info(f"rehearsal: {head}", resource=resource)
    failures: list[str] = []
    for line, st in zip(statements, trace.statements, strict=True):
        text = f"rehearsal: {line.strip()}"
        if st.failing:
            pulumi.log.error(f"{trace.filename}, {text.removeprefix('rehearsal: ')}", resource=resource)
            failures.append(_failure(trace, st))
        elif st.blocking:
            pulumi.log.warn(text, resource=resource)
        else:
            pulumi.log.info(text, resource=resource)
    if trace.error is not None and not any(st.error for st in trace.statements):
        pulumi.log.error(f"rehearsal: {trace.error.describe()}", resource=resource)
        failures.append(trace.error.describe())
    if result.calibration is not None:
        pulumi.log.info(f"rehearsal estimates: {result.calibration.describe()}", resource=resource)
    where = "an empty database (the target database does not exist yet)" if outcome.from_files_alone else (
        f"a copy of the target's schema on {outcome.scratch}")
    pulumi.log.info(f"rehearsal ran on {where}; the target was only read"
                    + ("" if result.target_read else f" (not read: {result.target_note})"), resource=resource)
    pulumi.log.info(_rehearsal_json(result, trace, outcome), resource=resource)
    return failures


def _failure(trace: MigrationTrace, st: StatementTrace) -> str:
    """`file, line N: statement: what fails` (the error's own line: where in the statement it is)."""
    if st.error is not None:
        state = f" (SQLSTATE {st.error.sqlstate})" if st.error.sqlstate else ""
        return f"{trace.filename}, line {st.error.line or st.line}: {st.summary}: {st.error.message}{state}"
    failed = "; ".join(c.describe().removeprefix("FAILS: ") for c in st.checks if c.status == "failed")
    return f"{trace.filename}, line {st.line}: {st.summary}: {failed}"


class RehearsalFailed(pulumi.RunError):
    """A pending migration fails on the target's data or schema. A RunError: the preview fails with
    this message alone, no traceback."""


def review_pending(
    chain: Sequence[tuple[Migration, MigrationFile]], args: MigrationsArgs,
    checkpoint: tuple[pulumi.CustomResource, Sequence[MigrationFile]] | None = None,
) -> pulumi.Output[None]:
    """During a preview, logs on each pending migration what its file will do (squawk's review and,
    unless turned off, the rehearsal's trace) and fails the preview if the rehearsal fails.

    Pending means not in the state yet: its id is unknown until the engine creates it (an applied
    migration keeps the id it was recorded with). The review rides on the resource's diagnostics,
    so `pulumi preview` shows it under the migration and `pulumi preview --json` carries it by URN.
    No pending migration: nothing runs, no session is opened. A pending checkpoint's files not yet
    recorded on the target are rehearsed first (later files meet their tables); their trace is logged
    on the checkpoint only when one of them ran.
    """
    async def review() -> None:
        pending = [(r, m) for r, m in chain if not await r.id.is_known()]
        held: list[tuple[pulumi.CustomResource, MigrationFile]] = []
        if checkpoint is not None and not await checkpoint[0].id.is_known():
            held = [(checkpoint[0], m) for m in checkpoint[1]]
        if not pending and not held:
            return
        for resource, _ in pending:  # resolved now, so each log line below is sent before the preview ends
            await resource.urn.future()
        loop = asyncio.get_running_loop()

        def squawk(m: MigrationFile) -> Review | MigrationsError:
            try:
                return review_migration(m, search_from=Path(args.directory))
            except MigrationsError as exc:
                return exc

        reviews = asyncio.gather(*(loop.run_in_executor(None, squawk, m) for _, m in pending))
        outcome: rehearsal.Outcome | MigrationsError | None = None
        if args.rehearsal is not None:
            plan = await _plan(args.connection, args.rehearsal)

            def say(message: str) -> None:
                loop.call_soon_threadsafe(pulumi.log.debug, message)

            def rehearse_chain() -> rehearsal.Outcome | MigrationsError:
                try:
                    return rehearsal.run(plan, list(args.migrations), {m.version for _, m in [*held, *pending]}, say)
                except MigrationsError as exc:
                    return exc

            outcome = await loop.run_in_executor(None, rehearse_chain)
        # On an empty database every table is new: that disproves no squawk finding about a live one.
        fresh = len(pending) + len(held) == len(args.migrations)
        result = outcome.rehearsal if isinstance(outcome, rehearsal.Outcome) else None
        failures: list[str] = []
        for holder, held_file in held:
            held_trace = None if result is None else next(
                (t for t in result.migrations if t.filename == held_file.filename), None)
            if isinstance(outcome, rehearsal.Outcome) and result is not None and held_trace is not None:
                failures += _log_rehearsal(holder, result, held_trace, outcome)
        for (resource, migration), found in zip(pending, await reviews, strict=True):
            trace = next((t for t in result.migrations if t.filename == migration.filename), None) if result else None
            if isinstance(found, MigrationsError):
                pulumi.log.warn(f"review incomplete: {found}", resource=resource)
            else:
                trusted = isinstance(outcome, rehearsal.Outcome) and (not outcome.from_files_alone or fresh)
                if trace is not None and trace.rehearsed and trusted:
                    found = reconcile(found, trace.statements)
                _log_review(resource, found)
            if isinstance(outcome, MigrationsError):
                pulumi.log.warn(f"not rehearsed: {outcome}", resource=resource)
            elif isinstance(outcome, rehearsal.Outcome) and (result is None or trace is None):
                pulumi.log.info("not rehearsed: already recorded on the target; `up` adopts it without "
                                "running it", resource=resource)
            elif isinstance(outcome, rehearsal.Outcome) and result is not None and trace is not None:
                failures += _log_rehearsal(resource, result, trace, outcome)
        if failures:
            await asyncio.sleep(0)  # lets the log lines above reach the engine before the program ends
            raise RehearsalFailed(
                "The rehearsal of the pending migrations failed; nothing was applied:\n"
                + "\n".join(f"  - {f}" for f in failures)
                + "\nFix the migration (or the data it meets), then preview again.")

    return pulumi.Output.from_input(review())


def _log_review(resource: Migration, result: Review) -> None:
    pulumi.log.info(f"will run: {result.summary()}", resource=resource)
    for finding in result.warnings:
        pulumi.log.warn(str(finding), resource=resource)
    for finding, why in result.disproved:
        pulumi.log.info(f"not a risk here: {finding} -- {why}", resource=resource)
    if result.lint:
        rules = sorted({f.rule for f in result.lint})
        pulumi.log.info(f"squawk style notes: {len(result.lint)} ({', '.join(rules)})", resource=resource)


def declare_checkpoint(
    component: pulumi.ComponentResource, covered: Sequence[MigrationFile], args: MigrationsArgs
) -> MigrationCheckpoint:
    """One resource for the files a checkpoint holds; during a preview of its creation, it names each
    of them (the ones not recorded yet on the database are applied, in order, by `up`)."""
    assert args.checkpoint is not None
    checkpoint_through = args.checkpoint.through
    checkpoint = MigrationCheckpoint(
        "schema-checkpoint", through=args.checkpoint.through, migrations=list(covered),
        connection=args.connection, keep_on_destroy=args.keep_data_on_destroy,
        allow_out_of_order=args.allow_out_of_order,
        opts=pulumi.ResourceOptions(parent=component, depends_on=args.after),
    )
    if pulumi.runtime.is_dry_run():
        async def name_them() -> None:
            if not await checkpoint.id.is_known():
                pulumi.log.info(f"checkpoint through {checkpoint_through}: "
                                f"applies those of its {len(covered)} files not recorded yet, in order: "
                                + ", ".join(m.filename for m in covered), resource=checkpoint)
        named: pulumi.Output[None] = pulumi.Output.from_input(name_them())
        del named
    return checkpoint


class Migrations(pulumi.ComponentResource):
    """One `Migration` resource per file, each depending on the one before.

    `pulumi preview` therefore lists pending migrations by file name; destroy reverts them in
    reverse order (the engine deletes dependents first).
    """

    TYPE: ClassVar[str] = "customer-insights:db:Migrations"

    last: pulumi.CustomResource | None
    versions: list[str]

    def __init__(self, name: str, args: MigrationsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(self.TYPE, name, None, opts)
        covered, declared = split_at_checkpoint(args.migrations, args.checkpoint)
        checkpoint = declare_checkpoint(self, covered, args) if covered else None
        previous: pulumi.CustomResource | None = checkpoint
        chain: list[tuple[Migration, MigrationFile]] = []
        for migration in declared:
            previous = Migration(
                # Named after the file (the provider refuses a rename of an applied one, naming this name).
                migration.filename.removesuffix(".sql"),
                migration=migration,
                connection=args.connection,
                accept_checksum=migration.version in args.accept_checksums,
                keep_on_destroy=args.keep_data_on_destroy,
                allow_out_of_order=args.allow_out_of_order,
                fixes=args.fixes,
                limits=args.limits,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[previous] if previous else args.after),
            )
            chain.append((previous, migration))
        if pulumi.runtime.is_dry_run():
            review_pending(chain, args, (checkpoint, covered) if checkpoint is not None else None)
        self.last = previous
        self.versions = [f.version for f in args.migrations]
        self.register_outputs({"versions": self.versions})

    @property
    def applied(self) -> list[pulumi.Resource]:
        """What a resource that needs the whole schema depends on: the last migration, the chain holds
        the rest. Depending on the component instead makes the SDK expand it to every migration for
        each dependent: a preview cost that grows with the chain."""
        return [self.last] if self.last is not None else [self]
