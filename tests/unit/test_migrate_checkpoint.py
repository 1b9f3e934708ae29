"""infra.migrate.checkpoint: folding applied history into checkpoint.json and splitting the files at it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra.migrate import (
    AppliedMigration,
    MigrationFileError,
    MigrationsError,
    checkpoint_of,
    load_checkpoint,
    load_migrations,
    split_at_checkpoint,
    write_checkpoint,
)

pytestmark = pytest.mark.unit


def files(tmp_path: Path, count: int = 4) -> list:
    for n in range(1, count + 1):
        (tmp_path / f"{n:03d}_m{n}.sql").write_text(f"CREATE TABLE m{n} (id int);\n")
    return load_migrations(tmp_path)


def applied(migrations: list) -> dict[str, AppliedMigration]:
    return {m.version: AppliedMigration(m.version, m.name, m.checksum, datetime.now(UTC), 1, "owner")
            for m in migrations}


def test_a_checkpoint_folds_the_applied_files_and_splits_them_off(tmp_path: Path) -> None:
    ms = files(tmp_path)
    write_checkpoint(tmp_path, checkpoint_of(ms, applied(ms[:3]), "003"))
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.through == "003"
    assert [(e.version, e.checksum) for e in checkpoint.migrations] == [(m.version, m.checksum) for m in ms[:3]]
    assert split_at_checkpoint(ms, checkpoint) == (ms[:3], ms[3:])
    assert split_at_checkpoint(ms, None) == ([], ms)
    (tmp_path / "checkpoint.json").unlink()
    assert load_checkpoint(tmp_path) is None


def test_only_applied_unedited_history_is_folded(tmp_path: Path) -> None:
    ms = files(tmp_path)
    with pytest.raises(MigrationsError, match=re.escape("003_m3.sql is not applied on this database")):
        checkpoint_of(ms, applied(ms[:2]), "003")
    edited = applied(ms[:3])
    edited["002"] = AppliedMigration("002", "m2", "sha256:other", datetime.now(UTC), 1, "owner")
    with pytest.raises(MigrationsError, match=re.escape("002_m2.sql was edited after it was applied")):
        checkpoint_of(ms, edited, "003")
    with pytest.raises(MigrationsError, match=re.escape("no migration file has version 007")):
        checkpoint_of(ms, applied(ms), "007")


def test_a_held_file_edited_missing_or_added_is_refused(tmp_path: Path) -> None:
    ms = files(tmp_path)
    write_checkpoint(tmp_path, checkpoint_of(ms, applied(ms), "003"))
    checkpoint = load_checkpoint(tmp_path)
    (tmp_path / "002_m2.sql").write_text("CREATE TABLE m2 (id bigint);\n")
    with pytest.raises(MigrationFileError, match=re.escape("002_m2.sql: edited after it was applied and folded")):
        split_at_checkpoint(load_migrations(tmp_path), checkpoint)
    (tmp_path / "002_m2.sql").unlink()
    with pytest.raises(MigrationFileError, match=re.escape("holds versions without a file: 002")):
        split_at_checkpoint(load_migrations(tmp_path), checkpoint)
    (tmp_path / "002_m2.sql").write_text("CREATE TABLE m2 (id int);\n")
    (tmp_path / "002_late.sql").write_text("SELECT 1;\n")
    with pytest.raises(MigrationFileError):
        load_migrations(tmp_path)  # a duplicate version is the files' own error
    (tmp_path / "002_late.sql").unlink()
    assert split_at_checkpoint(load_migrations(tmp_path), checkpoint)[0] == load_migrations(tmp_path)[:3]


def test_a_malformed_checkpoint_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.json").write_text("{not json")
    with pytest.raises(MigrationFileError, match=re.escape("write it again (fold the applied files into a new "
                                                           "checkpoint), or delete it")):
        load_checkpoint(tmp_path)


def test_files_a_checkpoint_holds_are_not_parsed_again_unless_changed(tmp_path: Path) -> None:
    ms = files(tmp_path, 2)
    # What validation would refuse, to show it is skipped only for the exact checksum held.
    (tmp_path / "003_m3.sql").write_text("BEGIN;\nCREATE TABLE m3 (id int);\nCOMMIT;\n")
    with pytest.raises(MigrationFileError, match="explicit BEGIN"):
        load_migrations(tmp_path)
    from infra.migrate import checksum_of
    held = {m.version: m.checksum for m in ms} | {"003": checksum_of("BEGIN;\nCREATE TABLE m3 (id int);\nCOMMIT;\n")}
    assert [m.version for m in load_migrations(tmp_path, validated=held)] == ["001", "002", "003"]
    with pytest.raises(MigrationFileError, match="explicit BEGIN"):
        load_migrations(tmp_path, validated={**held, "003": "sha256:other"})
