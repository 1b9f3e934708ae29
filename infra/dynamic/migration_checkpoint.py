"""The migration files folded into a checkpoint (sql/checkpoint.json) as one Pulumi resource.

It holds every file it covers (version, checksum, up and down SQL), so a fresh database gets them
applied in order and destroy reverts them in reverse order, as one `Migration` resource per file
would; a preview or an up with nothing new costs one resource instead of hundreds.

A stack whose state still has one `Migration` per covered file moves to the checkpoint with one
`pulumi up`: the checkpoint's create finds every file recorded in the tracking table and runs
nothing, and the engine then deletes the `Migration` resources the program no longer declares. Their
delete runs in this same provider process, after the checkpoint's check (the engine checks every
declared resource before it deletes what is no longer declared), and it forgets a migration this
process has seen a checkpoint hold, with the same checksum on the same database, instead of running
its down script (`covered_by_checkpoint`).
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, ReadResult, Resource, UpdateResult

from infra.connection import Connection, conninfo, database_of
from infra.dynamic.base import (
    PROVIDER_KEY,
    DiffingProvider,
    password_kept_secret,
    stop_waiting_on_property_outputs,
)
from infra.migrate import MigrationFile, Migrator
from infra.migration_identity import LOCK_NAME, MIGRATOR_APPLICATION_NAME

APPLICATION_NAME = "pulumi-migrations"

# (database, version, checksum) of every file a checkpoint declared in this process holds.
_held: set[tuple[Any, str, str]] = set()
_held_lock = threading.Lock()


def _hold(props: dict[str, Any]) -> None:
    key = database_of(props)
    if key is None:
        return
    with _held_lock:
        _held.update((key, f["version"], f["checksum"]) for f in props.get("files") or [])


def covered_by_checkpoint(props: dict[str, Any]) -> bool:
    """Whether a `Migration` being deleted is held by a checkpoint of this deployment: then its delete
    forgets it (the checkpoint reverts it on destroy) instead of running its down script."""
    key = database_of(props)
    with _held_lock:
        return key is not None and (key, props.get("version"), props.get("checksum")) in _held


def _files(props: dict[str, Any]) -> list[MigrationFile]:
    return [
        MigrationFile(version=f["version"], name=f["name"], filename=f["filename"], up_sql=f["up_sql"],
                      down_sql=f.get("down_sql"), checksum=f["checksum"], transactional=bool(f["transactional"]))
        for f in props.get("files") or []
    ]


def _migrator(props: dict[str, Any]) -> Migrator:
    return Migrator(conninfo(props, application_name=APPLICATION_NAME), log=pulumi.log.info,
                    application_name=MIGRATOR_APPLICATION_NAME, lock_name=LOCK_NAME,
                    allow_out_of_order=bool(props.get("allow_out_of_order")))


def _apply_pending(props: dict[str, Any]) -> dict[str, Any]:
    """Applies, in order, the files not recorded yet (one read of the tracking table; `apply` checks
    again under the lock and adopts what it finds recorded); the outputs."""
    migrator = _migrator(props)
    applied = migrator.applied()
    ran = 0
    for m in _files(props):
        if m.version not in applied:
            migrator.apply(m)
            ran += 1
    pulumi.log.info(f"checkpoint through {props['through']}: {ran} applied, "
                    f"{len(props['files']) - ran} already recorded")
    return {**props, "applied": ran}


class MigrationCheckpointProvider(DiffingProvider):
    # Never replaced: a replacement would revert every file it holds. A new `through` is an update.
    ignored_keys: ClassVar[frozenset[str]] = frozenset({"fixes", "applied"})

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """Refuses a held file whose checksum changed since the state recorded it; remembers what it
        holds for the deletes of this deployment (see the module)."""
        before = {f["version"]: f["checksum"] for f in (olds or {}).get("files") or []}
        for f in news.get("files") or []:
            if before.get(f["version"], f["checksum"]) != f["checksum"]:
                return CheckResult(news, [CheckFailure("", (
                    f"{f['filename']} (version {f['version']}) was edited after it was applied: the state "
                    f"recorded {before[f['version']]}, the file is {f['checksum']}; restore the file and add "
                    "a new migration for the change"))])
        _hold(news)
        return CheckResult(news, [])

    def create(self, props: dict[str, Any]) -> CreateResult:
        _hold(props)
        return CreateResult(id_=str(props["through"]), outs=_apply_pending(props))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        _hold(news)
        return UpdateResult(outs=_apply_pending(news))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        if props.get("keep_on_destroy"):
            pulumi.log.info(f"checkpoint through {props['through']}: kept (keep_on_destroy is set)")
            return
        migrator = _migrator(props)
        for m in reversed(_files(props)):
            migrator.revert(m)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """`pulumi refresh`: gone from the state once none of its files is recorded any more."""
        applied = _migrator(props).applied()
        if not any(f["version"] in applied for f in props.get("files") or []):
            return ReadResult(id_="", outs={})
        return ReadResult(id_=id_, outs=props)


class MigrationCheckpoint(Resource, module="db", name="MigrationCheckpoint"):
    """The files up to a checkpoint's version, applied in order by the owner role."""

    through: pulumi.Output[str]
    applied: pulumi.Output[int]

    def __init__(
        self,
        resource_name: str,
        *,
        through: str,
        migrations: list[MigrationFile],
        connection: Connection,
        keep_on_destroy: bool,
        allow_out_of_order: bool = False,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props: dict[str, Any] = {
            **connection.provider_inputs(),
            "through": through,
            "files": [{"version": m.version, "name": m.name, "filename": m.filename, "checksum": m.checksum,
                       "up_sql": m.up_sql, "down_sql": m.down_sql, "transactional": m.transactional}
                      for m in migrations],
            "keep_on_destroy": keep_on_destroy,
            "allow_out_of_order": allow_out_of_order,
            "applied": None,
        }
        super().__init__(MigrationCheckpointProvider(), resource_name, props, password_kept_secret(opts))
        stop_waiting_on_property_outputs(self, [*props, PROVIDER_KEY])
