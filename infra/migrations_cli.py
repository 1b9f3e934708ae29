"""`python -m infra.migrations_cli`: inspect and, in emergencies, drive the migrations by hand.

The normal path is `pulumi up` (each migration is a Pulumi resource); this CLI is the everyday
`migrate` / `migrate:rollback` / `migrate:make` of the team and the tool for inspection and repairs:

    python -m infra.migrations_cli status            # version, name, applied/pending/CHANGED, applied_at, ...
    python -m infra.migrations_cli up                # apply all pending in order, stop at the first failure
    python -m infra.migrations_cli up --allow-out-of-order   # also a pending file below the highest applied
    python -m infra.migrations_cli down              # revert the last applied migration (its .down.sql)
    python -m infra.migrations_cli new add_segments  # create sql/NNN_add_segments.sql and .down.sql
    python -m infra.migrations_cli repair 003        # accept 003's current checksum (after a harmless edit)
    python -m infra.migrations_cli checkpoint --through 120  # fold applied 001..120 into sql/checkpoint.json

The database comes from --database-url or $DATABASE_URL (a libpq URL or key=value string); the
directory from --dir (default `sql`). Exit status: 0 success, 1 migration error (message on stderr),
2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg

from infra.migrate.checkpoint import checkpoint_of, write_checkpoint
from infra.migrate.errors import (
    ChecksumMismatchError,
    MigrationFailedError,
    MigrationFileError,
    MigrationsError,
    OutOfOrderMigrationError,
)
from infra.migrate.files import MigrationFile, load_migrations, next_migration_paths
from infra.migrate.runner import Migrator
from infra.migrate.tracking import AppliedMigration
from infra.migration_identity import FILES_HINT, LOCK_NAME, MIGRATOR_APPLICATION_NAME

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

# The headers of the files `new` creates.
UP_HEADER = """\
-- {filename}: {title}
--
-- Runs in one transaction with its record in public.schema_migrations (all or nothing).
-- For statements that cannot run in a transaction (CREATE INDEX CONCURRENTLY, ...) put
-- `-- migrate:no-transaction` on a line of this header; then each statement runs on its own.
-- Never edit this file once it has been applied anywhere: add a new migration instead.

"""

DOWN_HEADER = """\
-- {filename}: reverts {up_filename}
--
-- Runs by `python -m infra.migrations_cli down` / when the migration's Pulumi resource is deleted.
-- Delete this file if the migration cannot be reverted.

"""


def _say(message: str) -> None:
    print(message, flush=True)


def _common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Accepted both before and after the subcommand; the subcommand's copy only overrides when given.
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--database-url",
        default=default(None),
        metavar="URL",
        help="PostgreSQL connection string (URL or key=value); default: $DATABASE_URL",
    )
    parser.add_argument(
        "--dir", default=default("sql"), help="directory of the migration files (default: sql)"
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=default(60.0),
        metavar="SECONDS",
        help="how long to wait for the migration lock held by another run (default: 60)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra.migrations_cli",
        description="Ordered SQL migrations (sql/NNN_name.sql) of the customer insights database.",
        epilog="Exit status: 0 success, 1 migration error, 2 usage error.",
    )
    _common_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("status", "show every migration: applied, pending (OUT-OF-ORDER: below the highest applied "
                   "version) or CHANGED (file edited after it was applied)"),
        ("up", "apply all pending migrations in order; stop at the first failure"),
        ("down", "revert the last applied migration with its .down.sql"),
    ):
        command = sub.add_parser(name, help=help_text, description=help_text)
        _common_options(command, top=False)
        if name == "up":
            command.add_argument(
                "--allow-out-of-order",
                action="store_true",
                help="also apply pending migrations numbered below the highest applied version "
                "(refused by default: they would run in another order than on a fresh database)",
            )
    new = sub.add_parser("new", help="create the next numbered pair of migration files")
    new.add_argument("name", help="snake_case name, e.g. add_customer_segments")
    _common_options(new, top=False)
    repair = sub.add_parser(
        "repair",
        help="accept the current checksum of an applied migration's file (runs no SQL)",
    )
    repair.add_argument("version", help="the migration's version, e.g. 003")
    _common_options(repair, top=False)
    checkpoint = sub.add_parser(
        "checkpoint",
        help="fold the applied history up to a version into checkpoint.json in the migrations directory "
             "(runs no SQL; every file up to it must be applied, unedited, on the database)",
    )
    checkpoint.add_argument("--through", required=True, metavar="VERSION", help="the last version folded, e.g. 120")
    _common_options(checkpoint, top=False)
    return parser


def _migrator(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Migrator:
    url = args.database_url or os.environ.get("DATABASE_URL")
    if not url:
        parser.error("no database: pass --database-url or set DATABASE_URL")
    return Migrator(
        url, lock_timeout=args.lock_timeout, log=_say, application_name=MIGRATOR_APPLICATION_NAME, lock_name=LOCK_NAME,
        allow_out_of_order=bool(getattr(args, "allow_out_of_order", False)),
    )


def _fix(error: MigrationsError) -> MigrationsError:
    """The library's refusals, with how to accept them from this command line."""
    if isinstance(error, ChecksumMismatchError):
        return error.with_fix(f"`python -m infra.migrations_cli repair {error.version}`")
    if isinstance(error, OutOfOrderMigrationError):
        return error.with_fix("`python -m infra.migrations_cli up --allow-out-of-order`")
    return error


def _fmt_time(record: AppliedMigration) -> str:
    return record.applied_at.isoformat(sep=" ", timespec="seconds")


def cmd_status(migrator: Migrator, migrations: list[MigrationFile]) -> int:
    applied = migrator.applied()
    rows: list[tuple[str, str, str, str, str]] = []
    counts: dict[str, int] = {}
    by_version = {m.version: m for m in migrations}
    highest = max((int(v) for v in applied if v.isdigit()), default=-1)
    versions = sorted(set(by_version) | set(applied), key=lambda v: (int(v) if v.isdigit() else -1, v))
    for version in versions:
        m = by_version.get(version)
        record = applied.get(version)
        if record is None:
            state = "OUT-OF-ORDER" if int(version) < highest else "pending"
        elif m is None:
            state = "NO FILE"  # recorded, but its file is gone (renamed or deleted)
        elif record.checksum != m.checksum:
            state = "CHANGED"
        else:
            state = "applied"
        counts[state] = counts.get(state, 0) + 1
        rows.append(
            (
                version,
                m.name if m else record.name if record else "",
                state,
                _fmt_time(record) if record else "",
                f"{record.duration_ms} ms" if record else "",
            )
        )
    header = ("version", "name", "status", "applied_at", "duration")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    summary = ", ".join(f"{n} {state}" for state, n in counts.items()) or "no migrations"
    print(f"\n{summary}")
    if counts.get("CHANGED"):
        print(
            "CHANGED: the file was edited after it was applied: restore it, or accept it with "
            "`python -m infra.migrations_cli repair VERSION`."
        )
    if counts.get("OUT-OF-ORDER"):
        print(
            "OUT-OF-ORDER: pending, but numbered below the highest applied version: `up` refuses it; "
            "renumber it after the highest applied version, or apply it with `up --allow-out-of-order`."
        )
    if counts.get("NO FILE"):
        print("NO FILE: recorded in public.schema_migrations, but no sql/ file has that version.")
    return EXIT_OK


def cmd_up(migrator: Migrator, migrations: list[MigrationFile]) -> int:
    results = migrator.apply_all(migrations)
    if not results:
        _say("nothing to apply: every migration is applied")
    else:
        ran = sum(1 for _, adopted in results if not adopted)
        _say(f"done: {ran} applied, {len(results) - ran} adopted")
    return EXIT_OK


def cmd_down(migrator: Migrator, migrations: list[MigrationFile]) -> int:
    applied = migrator.applied()
    if not applied:
        _say("nothing to revert: no migration is applied")
        return EXIT_OK
    last = list(applied.values())[-1]
    m = next((m for m in migrations if m.version == last.version), None)
    if m is None:
        raise MigrationsError(
            f"the last applied migration, version {last.version} ({last.name}), has no file in the "
            "migrations directory: restore its files to revert it"
        )
    migrator.revert(m)
    return EXIT_OK


def cmd_new(directory: Path, name: str) -> int:
    up, down = next_migration_paths(directory, name)
    directory.mkdir(parents=True, exist_ok=True)
    title = name.replace("_", " ")
    for path, text in (
        (up, UP_HEADER.format(filename=up.name, title=title)),
        (down, DOWN_HEADER.format(filename=down.name, up_filename=up.name)),
    ):
        with open(path, "x", encoding="utf-8") as f:  # never overwrite
            f.write(text)
        print(path)
    return EXIT_OK


def cmd_repair(migrator: Migrator, migrations: list[MigrationFile], version: str) -> int:
    m = next((m for m in migrations if int(m.version) == int(version)), None)
    if m is None:
        raise MigrationsError(f"no migration file with version {version} in the migrations directory")
    record = migrator.repair(m)
    _say(f"{m.filename}: recorded checksum is now {record.checksum}")
    return EXIT_OK


def cmd_checkpoint(migrator: Migrator, migrations: list[MigrationFile], directory: Path, through: str) -> int:
    checkpoint = checkpoint_of(migrations, migrator.applied(), through)
    path = write_checkpoint(directory, checkpoint)
    _say(f"{path}: {len(checkpoint.migrations)} migrations folded, through {checkpoint.through}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    directory = Path(args.dir)
    try:
        if args.command == "new":
            try:
                return cmd_new(directory, args.name)
            except MigrationFileError as e:
                parser.error(str(e))
        if args.command == "checkpoint" and not args.through.isdigit():
            parser.error(f"--through must be a version number like 120, not {args.through!r}")
        if args.command == "repair" and not args.version.isdigit():
            parser.error(f"VERSION must be a number like 003, not {args.version!r}")
        migrator = _migrator(args, parser)
        migrations = load_migrations(directory)
        if args.command == "status":
            return cmd_status(migrator, migrations)
        if args.command == "up":
            return cmd_up(migrator, migrations)
        if args.command == "down":
            return cmd_down(migrator, migrations)
        if args.command == "repair":
            return cmd_repair(migrator, migrations, args.version)
        if args.command == "checkpoint":
            return cmd_checkpoint(migrator, migrations, directory, args.through)
        parser.error(f"unknown command {args.command!r}")
    except MigrationsError as e:
        print(f"error: {_fix(e)}", file=sys.stderr, flush=True)
        if isinstance(e, MigrationFileError):
            print(f"({FILES_HINT}.)", file=sys.stderr, flush=True)
        if isinstance(e, MigrationFailedError):
            print("(`python -m infra.migrations_cli status` shows what is recorded.)", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except (psycopg.Error, OSError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return EXIT_USAGE  # unreachable: parser.error exits


if __name__ == "__main__":
    sys.exit(main())
