"""One SQL migration file as a Pulumi resource.

The resource's inputs carry the whole file (up and down SQL), so `pulumi destroy` can run the down
script even after the file has left the repository, and `pulumi preview` can tell an edited file
(a different checksum in the state) from a new one.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, ClassVar

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, Resource, UpdateResult

from infra.connection import Connection, conninfo, database_of
from infra.dynamic.base import (
    PROVIDER_KEY,
    DiffingProvider,
    ProviderFailure,
    password_kept_secret,
    renamed_from_generic_type,
    reported_create,
    reported_delete,
    reported_read,
    reported_update,
    resource_urn,
    stop_waiting_on_property_outputs,
)
from infra.dynamic.migration_checkpoint import covered_by_checkpoint
from infra.migrate import (
    AppliedMigration,
    ChecksumMismatchError,
    MigrationBlockedError,
    MigrationFailedError,
    MigrationFile,
    MigrationsError,
    Migrator,
    OutOfOrderMigrationError,
    RenamedMigrationError,
    StatementLimits,
    check_identity,
    check_order,
    highest_of,
)
from infra.migration_identity import LOCK_NAME, MIGRATOR_APPLICATION_NAME

APPLICATION_NAME = "pulumi-migrations"


def _migration(props: dict[str, Any]) -> MigrationFile:
    return MigrationFile(
        version=props["version"],
        name=props["name"],
        filename=props["filename"],
        up_sql=props["up_sql"],
        down_sql=props.get("down_sql"),
        checksum=props["checksum"],
        transactional=bool(props["transactional"]),
    )


def _migrator(props: dict[str, Any]) -> Migrator:
    return Migrator(conninfo(props, application_name=APPLICATION_NAME), log=pulumi.log.info,
                    application_name=MIGRATOR_APPLICATION_NAME, lock_name=LOCK_NAME,
                    allow_out_of_order=bool(props.get("allow_out_of_order")),
                    limits=StatementLimits.from_dict(props.get("limits")))


def _fix(props: dict[str, Any], refusal: str) -> str | None:
    """The program's words for accepting a refusal of the library (input `fixes`), if it gave any."""
    text = (props.get("fixes") or {}).get(refusal)
    return text.replace("{version}", str(props.get("version"))) if text else None


# The tracking table as read once per database by this provider process (one preview or up), so
# checking pending migrations costs one query, not one each. It can only lag behind migrations applied
# since: that may hide a refusal here, never invent one, and create() checks again under the lock.
_applied_by_database: dict[tuple[Any, ...], dict[str, AppliedMigration] | None] = {}

# The files the program declares (version -> filename) by database, as `check` saw them in this
# provider process: filled whenever the program runs (preview, up), empty in `pulumi destroy`, which
# does not run it. A delete while the program declares the database's files is a file's removal or
# rename, never a destroy: its down script must not run.
_declared_by_database: dict[tuple[Any, ...], dict[str, str]] = {}


def _applied(news: dict[str, Any]) -> dict[str, AppliedMigration] | None:
    key = database_of(news)
    if key is None:
        return None  # unknown connection: the database is being created, nothing is applied there yet
    if key not in _applied_by_database:
        try:
            _applied_by_database[key] = _migrator(news).applied()
        except MigrationsError:  # not reachable yet (a server being replaced): create() decides
            _applied_by_database[key] = None
    return _applied_by_database[key]


def _state_rename(urn: str | None, error: RenamedMigrationError) -> str:
    """The Pulumi way to keep a file's new name: the resource (named after the file) is renamed first."""
    old = f"{urn.rsplit('::', 1)[0]}::{error.applied_filename.removesuffix('.sql')}" if urn else "<its URN>"
    return (f"rename its resource in the state first, `pulumi state rename '{old}' "
            f"{error.filename.removesuffix('.sql')}`, then `pulumi up` records the new name and runs nothing")


def _renamed(news: dict[str, Any]) -> str | None:
    """Why a file Pulumi has not recorded must not be applied: its version is applied under another name."""
    try:
        check_identity(_migration(news), _applied(news) or {})
    except RenamedMigrationError as refused:
        return str(refused.with_fix(_state_rename(resource_urn(), refused)))
    return None


def _out_of_order(news: dict[str, Any]) -> str | None:
    """Why a pending migration must not be applied (a higher version is), checked in `preview`."""
    if news.get("allow_out_of_order"):
        return None
    applied = _applied(news)
    if not applied or news["version"] in applied:
        return None
    try:
        check_order(_migration(news), highest_of(applied.values()))
    except OutOfOrderMigrationError as refused:
        return str(refused.with_fix(_fix(news, "allow_out_of_order")))
    return None


# `pulumi refresh` reads every migration at once: the tracking table is read once per database by
# this provider process (the refresh's), under a lock so parallel reads wait for the first one.
_refreshed_by_database: dict[tuple[Any, ...], dict[str, AppliedMigration]] = {}
_refresh_lock = threading.Lock()


def applied_for_refresh(props: dict[str, Any]) -> dict[str, AppliedMigration]:
    """The tracking table of `props`' database as read by this process's first `read` of it."""
    key = database_of(props)
    if key is None:
        return _migrator(props).applied()
    with _refresh_lock:
        if key not in _refreshed_by_database:
            _refreshed_by_database[key] = _migrator(props).applied()
        return _refreshed_by_database[key]


def _outs(props: dict[str, Any], record: Any, adopted: bool) -> dict[str, Any]:
    return {
        **props,
        "applied_at": record.applied_at.isoformat(),
        "duration_ms": record.duration_ms,
        "applied_by": record.applied_by,
        "adopted": adopted,
    }


def _checksum_mismatch(olds: dict[str, Any], news: dict[str, Any]) -> ChecksumMismatchError | None:
    if not olds or olds.get("checksum") == news.get("checksum") or news.get("accept_checksum"):
        return None
    return ChecksumMismatchError(
        filename=news["filename"], version=news["version"], recorded=olds.get("checksum", "?"),
        current=news["checksum"], fix=_fix(news, "accept_checksum"),
    )


def _kept_from_reverting(props: dict[str, Any]) -> str | None:
    """Why a delete must not run the down script: the program runs and no longer declares this file."""
    declared = _declared_by_database.get(database_of(props) or ())
    if not declared or declared.get(props["version"]) == props["filename"]:
        return None  # `pulumi destroy` (the program did not run), or the file is still there
    urn = resource_urn() or "<its URN: pulumi stack --show-urns>"
    now = declared.get(props["version"])
    what = (f"is now {now} (the same version): a rename, which must not revert it" if now else
            f"left the migrations directory while applied: no file has version {props['version']} any more")
    return (
        f"{props['filename']} (version {props['version']}) {what}. Refused: its down script did not run, "
        "nothing changed.\nRestore the file"
        + (f" (rename {now} back)" if now else " (and its .down.sql)")
        + f" and run `pulumi up` again; to revert it on purpose (its down script runs): "
        f"`pulumi destroy --target '{urn}'`; to keep the schema as it is and drop the migration from the "
        f"Pulumi state without running anything: `pulumi state delete '{urn}'`."
    )


def _down_script_failed(failed: MigrationFailedError) -> ProviderFailure:
    urn = resource_urn() or "<its URN: pulumi stack --show-urns>"
    return ProviderFailure(
        f"{failed}\n  What to do: remove the cause and run the command again; or keep the migration "
        "(restore its files if they left the migrations directory, and run `pulumi up`: nothing runs); or "
        "drop it from the Pulumi state without running its down script (the schema stays as it is): "
        f"`pulumi state delete '{urn}'`."
    )


class MigrationProvider(DiffingProvider):
    # A file's identity is its version: no input replaces it (a replacement would run its down
    # script). A new name (a file renamed in the state too), new connection details (a rotated
    # password) or a new keep-data switch are in-place updates that run nothing: the state must hold
    # the current ones, since destroy and refresh connect with what the state holds.
    replace_keys: ClassVar[frozenset[str]] = frozenset()
    ignored_keys: ClassVar[frozenset[str]] = frozenset(
        {"accept_checksum", "allow_out_of_order", "fixes", "limits", "applied_at", "duration_ms", "applied_by",
         "adopted"}
    )

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """Refuses an edited applied file, and a pending file below the highest applied version (unless
        allowed), before anything else happens: `pulumi preview` fails on them.

        A check failure is what the engine reports as the resource's own message; an exception here
        or in `diff` would reach the user buried under the provider host's Python traceback.
        `olds` are the inputs in the state: empty for a pending migration.
        """
        if (key := database_of(news)) is not None:
            _declared_by_database.setdefault(key, {})[news["version"]] = news["filename"]
        if olds and olds.get("version") != news["version"]:
            return CheckResult(news, [CheckFailure("", (
                f"{news['filename']}: this resource was recorded as version {olds.get('version')} "
                f"({olds.get('filename')}); a migration's identity is its version: give the file its version back"))])
        if mismatch := _checksum_mismatch(olds, news):
            return CheckResult(news, [CheckFailure("", str(mismatch))])
        if not olds and (refusal := _renamed(news) or _out_of_order(news)):
            return CheckResult(news, [CheckFailure("", refusal)])
        return CheckResult(news, [])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # Unreachable through the engine (check refuses first); kept so no caller can skip the rule.
        if mismatch := _checksum_mismatch(olds, news):
            raise mismatch
        return super().diff(_id, olds, news)

    @reported_create
    def create(self, props: dict[str, Any]) -> CreateResult:
        try:
            record, adopted = _migrator(props).apply(_migration(props))
        except OutOfOrderMigrationError as refused:  # `up` without a preview, or a file applied meanwhile
            raise refused.with_fix(_fix(props, "allow_out_of_order")) from None
        except MigrationBlockedError as blocked:
            raise blocked.with_fix(_fix(props, "lock_wait")) from None
        except RenamedMigrationError as refused:  # the same, for a renamed file
            raise refused.with_fix(_state_rename(resource_urn(), refused)) from None
        return CreateResult(id_=props["version"], outs=_outs(props, record, adopted))

    @reported_update
    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        migration = _migration(news)
        migrator = _migrator(news)
        if olds.get("checksum") != news["checksum"]:
            # Only reachable with accept_checksum (see diff): a repair, nothing is re-run.
            record = migrator.repair(migration)
            return UpdateResult(outs=_outs(news, record, adopted=True))
        if olds.get("name") != news["name"]:  # renamed in the state and in the directory: recorded, nothing runs
            record = migrator.rename(migration)
            return UpdateResult(outs=_outs(news, record, adopted=bool(olds.get("adopted"))))
        current = migrator.check(migration)
        if current is None:
            raise ProviderFailure(
                f"{migration.filename} is in the Pulumi state but not in the tracking table: "
                "run `pulumi refresh` so the next `pulumi up` applies it again"
            )
        return UpdateResult(outs=_outs(news, current, adopted=bool(olds.get("adopted"))))

    @reported_delete
    def delete(self, _id: str, props: dict[str, Any]) -> None:
        if covered_by_checkpoint(props):  # moved into the checkpoint, which reverts it on destroy
            pulumi.log.info(f"{props['filename']}: held by the checkpoint now, forgotten (not reverted)")
            return
        if refusal := _kept_from_reverting(props):
            raise ProviderFailure(refusal)
        if props.get("keep_on_destroy"):
            pulumi.log.info(f"{props['filename']}: kept ({_fix(props, 'keep_data') or 'keep_on_destroy is set'})")
            return
        try:
            _migrator(props).revert(_migration(props))
        except MigrationFailedError as failed:
            raise _down_script_failed(failed) from None

    @reported_read
    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """`pulumi refresh`: a migration reverted outside Pulumi disappears from the state."""
        applied = applied_for_refresh(props).get(props["version"])
        if applied is None:
            return ReadResult(id_="", outs={})
        return ReadResult(id_=id_, outs={**props, "checksum": applied.checksum})


class Migration(Resource, module="db", name="Migration"):
    """A migration file applied to a database by its owner role.

    Its type, `pulumi-python:dynamic/db:Migration`, names it in every plan (the package part must stay
    `pulumi-python`: it routes the resource to the dynamic-provider host).
    """

    version: pulumi.Output[str]
    filename: pulumi.Output[str]
    checksum: pulumi.Output[str]
    applied_at: pulumi.Output[str]
    duration_ms: pulumi.Output[int]
    applied_by: pulumi.Output[str]
    adopted: pulumi.Output[bool]

    def __init__(
        self,
        resource_name: str,
        *,
        migration: MigrationFile,
        connection: Connection,
        accept_checksum: bool,
        keep_on_destroy: bool,
        allow_out_of_order: bool = False,
        fixes: Mapping[str, str] | None = None,
        limits: StatementLimits | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props: dict[str, Any] = {
            **connection.provider_inputs(),
            "version": migration.version,
            "name": migration.name,
            "filename": migration.filename,
            "checksum": migration.checksum,
            "up_sql": migration.up_sql,
            "down_sql": migration.down_sql,
            "transactional": migration.transactional,
            "accept_checksum": accept_checksum,
            "keep_on_destroy": keep_on_destroy,
            "allow_out_of_order": allow_out_of_order,
            # How the program words accepting a refusal (its config keys); see infra.migrate's errors.
            "fixes": dict(fixes or {}),
            # The limits its statements run under (lock timeout, retries): how, not what, so not diffed.
            "limits": (limits or StatementLimits()).to_dict(),
            "applied_at": None,
            "duration_ms": None,
            "applied_by": None,
            "adopted": None,
        }
        super().__init__(MigrationProvider(), resource_name, props,
                         renamed_from_generic_type(password_kept_secret(opts)))
        # Hundreds of migrations: keep the SDK's exit wait linear in their number (see the helper).
        stop_waiting_on_property_outputs(self, [*props, PROVIDER_KEY])
