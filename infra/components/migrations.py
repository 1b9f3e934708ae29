"""The files in sql/, applied in order as a chain of dependent resources."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pulumi

from infra.connection import Connection
from infra.dynamic.migration import Migration
from infra.dynamic.migration_checkpoint import MigrationCheckpoint
from infra.migrate import Checkpoint, MigrationFile, MigrationsError, split_at_checkpoint
from infra.migrate.review import review_migration


@dataclass
class MigrationsArgs:
    # Loaded and validated once by the program (`infra.config.checked_migrations`), in version order.
    migrations: Sequence[MigrationFile]
    directory: str  # where they were read from: the review looks for squawk's configuration from there
    connection: Connection  # as the owner role, never a superuser
    accept_checksums: frozenset[str] = field(default_factory=frozenset)
    keep_data_on_destroy: bool = False
    # Apply a pending file numbered below the highest applied version (refused by default).
    allow_out_of_order: bool = False
    # How the program words accepting what the library refuses (`infra.config.migration_fixes`).
    fixes: Mapping[str, str] = field(default_factory=dict)
    # What must exist first (the database, its roles and grants). The first migration depends on
    # these directly, so the state records it and destroy reverts the schema before revoking them.
    after: list[pulumi.Resource] = field(default_factory=list)
    # `pulumi preview` reviews each pending migration with squawk, using this configuration (None:
    # the .squawk.toml squawk finds from `directory` upwards, as `squawk sql/*.sql` in CI does).
    squawk_config: str | None = None
    # sql/checkpoint.json (`infra.config.checked_checkpoint`): the files up to it are one resource.
    checkpoint: Checkpoint | None = None


def review_if_pending(resource: Migration, migration: MigrationFile, args: MigrationsArgs) -> pulumi.Output[None]:
    """During a preview, logs on `resource` what its file will do and warns of what is risky in it.

    Pending means not in the state yet: its id is unknown until the engine creates it (an applied
    migration keeps the id it was recorded with). The review rides on the resource's diagnostics,
    so `pulumi preview` shows it under the migration and `pulumi preview --json` carries it by URN.
    """
    config = Path(args.squawk_config) if args.squawk_config else None

    async def review() -> None:
        if await resource.id.is_known():
            return
        run = functools.partial(review_migration, migration, squawk_config=config, search_from=Path(args.directory))
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, run)
        except MigrationsError as exc:
            pulumi.log.warn(f"review incomplete: {exc}", resource=resource)
            return
        pulumi.log.info(f"will run: {result.summary()}", resource=resource)
        for finding in result.warnings:
            pulumi.log.warn(str(finding), resource=resource)
        if result.lint:
            rules = sorted({f.rule for f in result.lint})
            pulumi.log.info(f"squawk style notes: {len(result.lint)} ({', '.join(rules)})", resource=resource)

    return pulumi.Output.from_input(review())


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

    last: pulumi.CustomResource | None
    versions: list[str]

    def __init__(self, name: str, args: MigrationsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("customer-insights:db:Migrations", name, None, opts)
        covered, pending = split_at_checkpoint(args.migrations, args.checkpoint)
        previous: pulumi.CustomResource | None = declare_checkpoint(self, covered, args) if covered else None
        for migration in pending:
            previous = Migration(
                migration.filename.removesuffix(".sql"),
                migration=migration,
                connection=args.connection,
                accept_checksum=migration.version in args.accept_checksums,
                keep_on_destroy=args.keep_data_on_destroy,
                allow_out_of_order=args.allow_out_of_order,
                fixes=args.fixes,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[previous] if previous else args.after),
            )
            if pulumi.runtime.is_dry_run():
                review_if_pending(previous, migration, args)
        self.last = previous
        self.versions = [f.version for f in args.migrations]
        self.register_outputs({"versions": self.versions})

    @property
    def applied(self) -> list[pulumi.Resource]:
        """What a resource that needs the whole schema depends on: the last migration, the chain holds
        the rest. Depending on the component instead makes the SDK expand it to every migration for
        each dependent (measured: no-change preview at 300 migrations 9.5-9.95 s -> 6.7-6.95 s)."""
        return [self.last] if self.last is not None else [self]
