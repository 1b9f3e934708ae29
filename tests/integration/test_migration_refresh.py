"""`pulumi refresh` of the Migration resources, the provider's read() called directly against a real
PostgreSQL: one read of the tracking table per database, whatever the number of migrations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from infra.dynamic import migration as provider_module
from infra.dynamic.migration import MigrationProvider
from infra.migrate import Migrator, load_migrations
from tests.integration.test_migrate_provider_order import inputs

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    provider_module._refreshed_by_database.clear()
    yield
    provider_module._refreshed_by_database.clear()


def test_refresh_reads_the_tracking_table_once_per_database(
    fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(1, 31):
        (tmp_path / f"{n:03d}_m{n}.sql").write_text(f"CREATE TABLE m{n} (id int);\n")
    files = load_migrations(tmp_path)
    Migrator(fresh_db).apply_all(files)
    with psycopg.connect(fresh_db, autocommit=True) as conn:  # reverted outside Pulumi
        conn.execute("DROP TABLE m30")
        conn.execute("DELETE FROM schema_migrations WHERE version = '030'")
    reads: list[int] = []
    real_applied = Migrator.applied

    def counted(self: Migrator) -> Any:
        reads.append(1)
        return real_applied(self)

    monkeypatch.setattr(Migrator, "applied", counted)
    results = [MigrationProvider().read(m.version, inputs(fresh_db, m)) for m in files]
    assert len(reads) == 1  # thirty migrations, one read
    assert [r.id for r in results] == [m.version for m in files[:29]] + [""]  # 030 leaves the state
    assert all(r.outs["checksum"] == m.checksum for r, m in zip(results[:29], files, strict=False))
