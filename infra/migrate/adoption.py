"""Adopting a database another migration tool built: its history read, the schema verified, the files recorded.

    plan = read_plan(target, files, tool="knex")                       # read-only
    verify(plan, target, scratch=server, owner="app_owner")             # refuses on any difference
    record(plan, target)                                                # the matched files, as applied

The other tool's history table names the migrations it applied; each is matched to a file by version
(the number its name or version starts with). Before anything is recorded, the matched files are
applied to a scratch database and its catalog is compared with the target's (`catalog`): every
difference is listed and adoption refuses until each is fixed (a migration that makes the live schema
what the files make) or accepted by its id. Recording writes the matched files into the tracking table
without running them; the files after them stay pending and are applied as usual. The other tool's
history stays in the database: knex's and Flyway's tables where they are; dbmate's and golang-migrate's
`public.schema_migrations` (the tracking table's own name) is renamed to `schema_migrations_<tool>`,
rows untouched.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from . import catalog, tracking
from .errors import MigrationsError
from .files import MigrationFile
from .locking import DEFAULT_LOCK_NAME, migration_lock
from .runner import DEFAULT_APPLICATION_NAME, Migrator
from .scratch import ScratchServer, scratch_database
from .session import CONNECT_TIMEOUT

TOOLS = ("knex", "flyway", "dbmate", "golang-migrate")
# Each tool's history tables in `public` (left out of the schema comparison).
HISTORY_TABLES: dict[str, tuple[str, ...]] = {
    "knex": ("knex_migrations", "knex_migrations_lock"),
    "flyway": ("flyway_schema_history",),
    "dbmate": (tracking.TABLE,),
    "golang-migrate": (tracking.TABLE,),
}
READ_TIMEOUT_MS = 10000  # every read of the target runs under this statement timeout
_LEADING_NUMBER = re.compile(r"^0*([0-9]+)")

Log = Callable[[str], None]


class AdoptionError(MigrationsError):
    """The database cannot be adopted as it is; the message names each reason and the ways out."""

    def __init__(self, summary: str, reasons: Sequence[str], ways_out: Sequence[str] = ()) -> None:
        self.summary = summary
        self.reasons = list(reasons)
        self.ways_out = list(ways_out)
        lines = [summary, *(f"  - {r}" for r in self.reasons)]
        if self.ways_out:
            lines += ["Ways out:", *(f"  * {w}" for w in self.ways_out)]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across the dynamic-provider boundary
        return (AdoptionError, (self.summary, self.reasons, self.ways_out))


class SchemaDifferencesError(AdoptionError):
    """The live schema is not the schema the matched files produce."""

    def __init__(self, differences: Sequence[catalog.Difference], stale_accepts: Sequence[str] = (),
                 ways_out: Sequence[str] = ()) -> None:
        self.differences = list(differences)
        self.stale_accepts = list(stale_accepts)
        reasons = [str(d) for d in differences]
        reasons += [f"accepted difference {a!r} does not occur (remove it)" for a in stale_accepts]
        super().__init__(
            f"Adoption refused: the live schema differs from what the matched files make "
            f"({len(differences)} difference(s)); nothing was changed.",
            reasons, ways_out)

    def __reduce__(self) -> tuple[Any, ...]:
        return (SchemaDifferencesError, (self.differences, self.stale_accepts, self.ways_out))


@dataclass(frozen=True)
class ForeignRecord:
    label: str  # as the other tool recorded it: a knex file name, a Flyway version and description, ...
    version: int | None  # the number it starts with; None: it has none (a repeatable Flyway migration)
    covers_below: bool = False  # golang-migrate's one row, a Flyway baseline: every lower version too


@dataclass(frozen=True)
class AdoptionPlan:
    tool: str
    records: list[ForeignRecord]
    matched: list[MigrationFile]  # recorded as applied, not run
    pending: list[MigrationFile]  # applied as usual afterwards
    history_tables: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        versions = ", ".join(m.version for m in self.matched) or "none"
        return (f"{self.tool} history: {len(self.records)} record(s); files adopted without running: {versions}; "
                f"pending: {', '.join(m.version for m in self.pending) or 'none'}")


def _read_only(conninfo: str, application_name: str) -> psycopg.Connection[Any]:
    """A session that can only read, each statement bounded, so verifying a production database is safe."""
    options = f"-c default_transaction_read_only=on -c statement_timeout={READ_TIMEOUT_MS} -c lock_timeout=2000"
    try:
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT, options=options,
                               application_name=application_name)
    except psycopg.Error as e:
        raise MigrationsError(f"cannot connect to the database to adopt: {str(e).strip()}") from e


def _columns(conn: psycopg.Connection[Any], table: str) -> dict[str, str] | None:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid WHERE c.relnamespace = 'public'::regnamespace AND c.relname = %s "
        "AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped", (table,)).fetchall()
    return {r[0]: r[1] for r in rows} if rows else None


def _number(text: str | None) -> int | None:
    found = _LEADING_NUMBER.match(text or "")
    return int(found.group(1)) if found else None


def read_history(conn: psycopg.Connection[Any], tool: str) -> list[ForeignRecord]:
    """The migrations `tool` recorded in its history table, in the order it applied them."""
    if tool not in TOOLS:
        raise AdoptionError(f"Unknown migration tool {tool!r}.", [f"adoption reads the history of {', '.join(TOOLS)}"])
    table = HISTORY_TABLES[tool][0]
    columns = _columns(conn, table)
    if columns is None:
        raise AdoptionError(f"No {tool} history in this database: there is no table public.{table}.",
                            [f"{tool} records what it applied in public.{table}"],
                            ["name the tool that built the database", "or apply the files to an empty database"])
    if tool in ("dbmate", "golang-migrate"):
        if "checksum" in columns:
            raise AdoptionError("This database is already managed by this migration runner: public.schema_migrations "
                                "is its own tracking table.", ["nothing to adopt"], ["run the migrations as usual"])
        shape = {"version"} if tool == "dbmate" else {"version", "dirty"}
        if set(columns) != shape:
            raise AdoptionError(
                f"public.schema_migrations is not {tool}'s history table.",
                [f"its columns are {sorted(columns)}; {tool}'s are {sorted(shape)}"],
                [f"name the tool whose table it is ({', '.join(TOOLS)})"])
    if tool == "knex":
        rows = conn.execute("SELECT name FROM knex_migrations ORDER BY id").fetchall()
        return [ForeignRecord(r[0], _number(r[0])) for r in rows]
    if tool == "flyway":
        rows = conn.execute(
            "SELECT version, description, type, success FROM flyway_schema_history "
            "WHERE type <> 'SCHEMA' ORDER BY installed_rank").fetchall()
        failed = [f"V{r[0]} {r[1]}" for r in rows if not r[3]]
        if failed:
            raise AdoptionError("Flyway's history records failed migrations.", failed,
                                ["fix them with Flyway (`flyway repair`) first"])
        return [ForeignRecord(f"{'V' + r[0] if r[0] else 'R'} {r[1]} ({r[2]})",
                              int(r[0]) if r[0] and r[0].isdigit() else None, covers_below=r[2] == "BASELINE")
                for r in rows]
    if tool == "dbmate":
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        return [ForeignRecord(str(r[0]), _number(str(r[0]))) for r in rows]
    rows = conn.execute("SELECT version, dirty FROM schema_migrations").fetchall()
    if any(r[1] for r in rows):
        raise AdoptionError("golang-migrate's history is dirty: a migration failed half way.",
                            [f"version {r[0]} is marked dirty" for r in rows if r[1]],
                            ["fix the schema by hand and `migrate force <version>` first"])
    return [ForeignRecord(str(r[0]), int(r[0]), covers_below=True) for r in rows]


def match(tool: str, records: Sequence[ForeignRecord], files: Sequence[MigrationFile]) -> AdoptionPlan:
    """The files the history covers (by version) and those left to apply; AdoptionError when a record
    matches no file, or the covered files are not the first ones (a gap)."""
    ordered = sorted(files, key=lambda m: int(m.version))
    by_number = {int(m.version): m for m in ordered}
    covered: set[int] = set()
    unmatched = []
    for r in records:
        if r.version is None or (r.version not in by_number and not r.covers_below):
            unmatched.append(f"{r.label}: no file in the migrations folder has version {r.version}"
                             if r.version is not None else f"{r.label}: has no version to match a file by")
            continue
        if r.covers_below:
            covered |= {n for n in by_number if n <= r.version}
        else:
            covered.add(r.version)
    if unmatched:
        raise AdoptionError(f"Adoption refused: {len(unmatched)} record(s) of {tool}'s history match no file; "
                            "nothing was changed.", unmatched,
                            ["give each migration of the other tool a file with the same version number",
                             "or adopt with a folder whose files are numbered as that tool's migrations"])
    matched = [m for m in ordered if int(m.version) in covered]
    if matched and matched != ordered[:len(matched)]:
        gaps = [m.filename for m in ordered[:ordered.index(matched[-1])] if m not in matched]
        raise AdoptionError(f"Adoption refused: {tool}'s history skips files below the last one it applied; "
                            "nothing was changed.", [f"{g}: not in the history" for g in gaps],
                            ["apply those with the other tool first, so the history has no gap"])
    return AdoptionPlan(tool, list(records), matched, ordered[len(matched):], HISTORY_TABLES[tool])


def managed_by_this_runner(conn: psycopg.Connection[Any]) -> bool:
    """Whether public.schema_migrations is this runner's tracking table (not dbmate's or golang-migrate's)."""
    return "checksum" in (_columns(conn, tracking.TABLE) or {})


def read_plan(target: str, files: Sequence[MigrationFile], tool: str, *,
              application_name: str = DEFAULT_APPLICATION_NAME) -> AdoptionPlan:
    """The other tool's history on `target`, matched to `files` (read-only)."""
    with _read_only(target, application_name) as conn:
        if managed_by_this_runner(conn):
            raise AdoptionError("This database is already managed by this migration runner "
                                "(public.schema_migrations is its tracking table).", ["nothing to adopt"],
                                ["run the migrations as usual (no adoption)"])
        return match(tool, read_history(conn, tool), files)


def compare(plan: AdoptionPlan, target: str, *, scratch: ScratchServer, owner: str,
            log: Log | None = None, application_name: str = DEFAULT_APPLICATION_NAME) -> list[catalog.Difference]:
    """The differences between the schema `plan.matched` makes (applied to an empty scratch database) and
    the target's (read-only)."""
    say = log or (lambda _m: None)
    with scratch_database(scratch, schema_from=None, owner=owner, log=say) as scratch_db:
        Migrator(scratch_db, log=say, application_name=application_name).apply_all(plan.matched)
        with psycopg.connect(scratch_db, autocommit=True) as conn:
            expected = catalog.snapshot(conn, ignore_tables=[tracking.TABLE])
    with _read_only(target, application_name) as conn:
        live = catalog.snapshot(conn, ignore_tables=[*plan.history_tables, tracking.TABLE])
    return catalog.diff(expected, live)


def verify(plan: AdoptionPlan, target: str, *, scratch: ScratchServer, owner: str, accept: Iterable[str] = (),
           ways_out: Sequence[str] = (), log: Log | None = None,
           application_name: str = DEFAULT_APPLICATION_NAME) -> list[catalog.Difference]:
    """SchemaDifferencesError listing every difference not in `accept` (and every accepted id that does not
    occur); else the accepted differences."""
    accepted = set(accept)
    differences = compare(plan, target, scratch=scratch, owner=owner, log=log, application_name=application_name)
    refused = [d for d in differences if d.id not in accepted]
    stale = sorted(accepted - {d.id for d in differences})
    if refused or stale:
        raise SchemaDifferencesError(refused, stale, ways_out)
    return differences


def tables(target: str, plan: AdoptionPlan, *, application_name: str = DEFAULT_APPLICATION_NAME) -> list[str]:
    """The tables of schema public, the history tables aside (what the other tool made)."""
    with _read_only(target, application_name) as conn:
        rows = conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p') "
            "AND NOT relname = ANY(%s) ORDER BY 1", ([*plan.history_tables, tracking.TABLE],)).fetchall()
    return [r[0] for r in rows]


def record(plan: AdoptionPlan, target: str, *, log: Log | None = None, lock_name: str = DEFAULT_LOCK_NAME,
           application_name: str = DEFAULT_APPLICATION_NAME) -> list[str]:
    """Record `plan.matched` as applied, running none of them, under the migration lock `lock_name` (the
    one the migrators of `target` take), in one transaction.

    dbmate's and golang-migrate's table is moved aside first (renamed, rows untouched): it has the tracking
    table's name. Returns the versions newly recorded (already recorded ones are kept as they are)."""
    say = log or (lambda _m: None)
    try:
        conn = psycopg.connect(target, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                               application_name=application_name)
    except psycopg.Error as e:
        raise MigrationsError(f"cannot connect to the database to adopt: {str(e).strip()}") from e
    recorded: list[str] = []
    try:
        with conn, migration_lock(conn, 60.0, say, name=lock_name), conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '5s'")
            current = _columns(conn, tracking.TABLE)
            if plan.tool in ("dbmate", "golang-migrate") and current is not None and "checksum" not in current:
                aside = f"{tracking.TABLE}_{plan.tool.replace('-', '_')}"
                if _columns(conn, aside) is not None:
                    raise AdoptionError(f"Cannot move {plan.tool}'s history aside: public.{aside} exists.",
                                        [f"public.{tracking.TABLE} must become this runner's tracking table"],
                                        [f"rename or drop public.{aside} first"])
                conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                    sql.Identifier("public", tracking.TABLE), sql.Identifier(aside)))
                say(f"adoption: {plan.tool}'s history kept as public.{aside}")
            tracking.ensure_table(conn)
            for m in plan.matched:
                if tracking.fetch(conn, m.version) is None:
                    tracking.insert(conn, m.version, m.name, m.checksum, 0)
                    recorded.append(m.version)
            say(f"adoption: recorded as applied without running: {', '.join(recorded) or 'nothing new'}")
    except psycopg.Error as e:
        raise MigrationsError(f"adoption could not record the history: {str(e).strip()}") from e
    return recorded
