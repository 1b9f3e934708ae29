"""The files in sql/, applied in order as a chain of dependent resources."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi

from infra.dynamic.migration import Migration
from infra.migrate import load_migrations


@dataclass
class MigrationsArgs:
    directory: str
    # host, port, dbname, user (the owner role, never a superuser), password, sslmode
    connection: dict[str, pulumi.Input[Any]]
    accept_checksums: frozenset[str] = field(default_factory=frozenset)
    keep_data_on_destroy: bool = False


class Migrations(pulumi.ComponentResource):
    """One `Migration` resource per file, each depending on the one before.

    `pulumi preview` therefore lists pending migrations by file name; destroy reverts them in
    reverse order (the engine deletes dependents first).
    """

    last: Migration | None
    versions: list[str]

    def __init__(self, name: str, args: MigrationsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("customer-insights:db:Migrations", name, None, opts)
        files = load_migrations(args.directory)
        unknown = sorted(args.accept_checksums - {f.version for f in files})
        if unknown:
            raise ValueError(
                f"migrations:acceptChecksums names versions with no file in {args.directory}: {unknown}; "
                "remove them from the stack config"
            )
        previous: Migration | None = None
        for migration in files:
            previous = Migration(
                migration.filename.removesuffix(".sql"),
                migration=migration,
                connection=args.connection,
                accept_checksum=migration.version in args.accept_checksums,
                keep_on_destroy=args.keep_data_on_destroy,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[previous] if previous else []),
            )
        self.last = previous
        self.versions = [f.version for f in files]
        self.register_outputs({"versions": self.versions})
