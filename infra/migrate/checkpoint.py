"""Checkpoints: the applied history up to a version, folded into one record of the directory.

`checkpoint.json` next to the migration files lists the files up to its version `through` with the
checksum each was applied with:

    {"through": "990", "migrations": [{"version": "001", "name": "create_organizations",
                                       "checksum": "sha256:..."}, ...]}

The files stay where they are (a fresh database still runs each of them, in order); what changes is
that a caller may treat the files up to `through` as one unit. `write_checkpoint` only writes one for
a history that is applied, unedited, on the database it was given; `split_at_checkpoint` refuses a
file under the checkpoint that is missing or was edited since.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import MigrationFileError, MigrationsError
from .files import MigrationFile
from .tracking import AppliedMigration, version_number

CHECKPOINT_FILE = "checkpoint.json"


@dataclass(frozen=True)
class CheckpointEntry:
    version: str
    name: str
    checksum: str


@dataclass(frozen=True)
class Checkpoint:
    through: str
    migrations: tuple[CheckpointEntry, ...]

    def to_json(self) -> str:
        return json.dumps({"through": self.through,
                           "migrations": [vars(e) for e in self.migrations]}, indent=1) + "\n"


def load_checkpoint(directory: str | os.PathLike[str]) -> Checkpoint | None:
    """The checkpoint of `directory`, None without one; MigrationFileError for a malformed file."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = tuple(CheckpointEntry(str(e["version"]), str(e["name"]), str(e["checksum"]))
                        for e in doc["migrations"])
        checkpoint = Checkpoint(str(doc["through"]), entries)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MigrationFileError(
            f"{CHECKPOINT_FILE}: not a checkpoint ({e}): write it again (fold the applied files into a "
            "new checkpoint), or delete it"
        ) from e
    if not entries or entries[-1].version != checkpoint.through:
        raise MigrationFileError(f"{CHECKPOINT_FILE}: its last migration is not its `through` version "
                                 f"{checkpoint.through}: write it again, or delete it")
    return checkpoint


def split_at_checkpoint(
    migrations: Sequence[MigrationFile], checkpoint: Checkpoint | None
) -> tuple[list[MigrationFile], list[MigrationFile]]:
    """(the files the checkpoint holds, the files after it). MigrationFileError, naming the file and
    the fix, when a file it holds is missing, was edited since, or a file up to `through` is not in it."""
    if checkpoint is None:
        return [], list(migrations)
    limit = version_number(checkpoint.through)
    held = {e.version: e for e in checkpoint.migrations}
    covered = [m for m in migrations if version_number(m.version) <= limit]
    for m in covered:
        entry = held.get(m.version)
        if entry is None:
            raise MigrationFileError(
                f"{m.filename}: numbered up to the checkpoint ({checkpoint.through}) but not in {CHECKPOINT_FILE}: "
                "renumber it after the highest version, or fold it in by writing the checkpoint again"
            )
        if entry.checksum != m.checksum:
            raise MigrationFileError(
                f"{m.filename}: edited after it was applied and folded into {CHECKPOINT_FILE} (recorded "
                f"{entry.checksum}, file {m.checksum}): restore the file (`git checkout` it); add a new "
                "migration for the change"
            )
    missing = sorted(set(held) - {m.version for m in covered}, key=version_number)
    if missing:
        raise MigrationFileError(
            f"{CHECKPOINT_FILE} holds versions without a file: {', '.join(missing)}: restore their files "
            "(a fresh database runs each of them)"
        )
    return covered, [m for m in migrations if version_number(m.version) > limit]


def checkpoint_of(
    migrations: Sequence[MigrationFile], applied: Mapping[str, AppliedMigration], through: str
) -> Checkpoint:
    """The checkpoint folding the files up to `through`; MigrationsError unless each of them is applied
    (in `applied`, the tracking table) with its file's checksum."""
    limit = version_number(through)
    covered = [m for m in migrations if version_number(m.version) <= limit]
    if not covered or version_number(covered[-1].version) != limit:
        raise MigrationsError(f"no migration file has version {through}: name the version of an existing file")
    for m in covered:
        record = applied.get(m.version)
        if record is None:
            raise MigrationsError(f"{m.filename} is not applied on this database: apply it first (`up`), "
                                  "a checkpoint only folds applied history")
        if record.checksum != m.checksum:
            raise MigrationsError(f"{m.filename} was edited after it was applied (recorded {record.checksum}, "
                                  f"file {m.checksum}): restore the file, or `repair` it, first")
    return Checkpoint(covered[-1].version,
                      tuple(CheckpointEntry(m.version, m.name, m.checksum) for m in covered))


def write_checkpoint(directory: str | os.PathLike[str], checkpoint: Checkpoint) -> Path:
    """Writes `checkpoint` into `directory` (replacing one there); returns the file."""
    path = Path(directory) / CHECKPOINT_FILE
    path.write_text(checkpoint.to_json(), encoding="utf-8")
    return path
