"""The Migration provider's order check (what `pulumi preview` runs for a pending file), called
directly against a real PostgreSQL: what it reads, what it refuses and in whose words."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pulumi.runtime import rpc

from infra.config import migration_fixes
from infra.dynamic import migration as provider_module
from infra.dynamic.migration import MigrationProvider
from infra.migrate import MigrationFile, Migrator, OutOfOrderMigrationError, load_migrations
from tests.helpers import write_files

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    provider_module._applied_by_database.clear()
    yield
    provider_module._applied_by_database.clear()


def write(directory: Path, files: dict[str, str]) -> list[MigrationFile]:
    return load_migrations(write_files(directory, files))


def inputs(dsn: str, m: MigrationFile, **overrides: Any) -> dict[str, Any]:
    """The inputs the engine passes to check() for a pending Migration (the Migration resource's props)."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    props: dict[str, Any] = {
        "host": params.get("host"), "port": int(params.get("port") or 5432), "dbname": params["dbname"],
        "user": params["user"], "password": params.get("password"), "sslmode": "disable",
        "version": m.version, "name": m.name, "filename": m.filename, "checksum": m.checksum,
        "up_sql": m.up_sql, "down_sql": m.down_sql, "transactional": m.transactional,
        "accept_checksum": False, "keep_on_destroy": False, "allow_out_of_order": False,
        "fixes": migration_fixes("customer-insights-db"),
    }
    props.update(overrides)
    return props


def failures(news: dict[str, Any]) -> list[str]:
    return [f.reason for f in MigrationProvider().check({}, news).failures]


def test_preview_refuses_a_pending_file_below_the_highest_applied_version(fresh_db: str, tmp_path: Path) -> None:
    first, last = write(tmp_path, {"001_a.sql": "CREATE TABLE a (id int);\n",
                                   "010_b.sql": "CREATE TABLE b (id int);\n"})
    Migrator(fresh_db).apply_all([first, last])
    late = write(tmp_path, {"002_c.sql": "CREATE TABLE c (id int);\n"})[1]

    (reason,) = failures(inputs(fresh_db, late))
    assert reason.startswith("002_c.sql (version 002) is not applied, but a later version already is: 010 (b).")
    assert reason.endswith(
        "apply it out of order: set the stack config `customer-insights-db:allowOutOfOrder` to true "
        "(`pulumi config set allowOutOfOrder true`), run `pulumi up`, then remove it "
        "(`pulumi config rm allowOutOfOrder`)."
    )
    # The same facts as the library's own refusal, which create() raises if the preview missed it.
    with pytest.raises(OutOfOrderMigrationError) as refused:
        Migrator(fresh_db).apply(late)
    assert reason == str(refused.value.with_fix(reason.rsplit("apply it out of order: ", 1)[1].removesuffix(".")))

    assert failures(inputs(fresh_db, late, allow_out_of_order=True)) == []
    assert failures(inputs(fresh_db, write(tmp_path, {"011_d.sql": "CREATE TABLE d (id int);\n"})[-1])) == []
    # Recorded already (an `up` that died before Pulumi saved its state): adopted, not refused.
    assert failures(inputs(fresh_db, first)) == []
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT to_regclass('c')").fetchone() == (None,)


def test_preview_reads_the_tracking_table_once_per_database(
    fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write(tmp_path, {f"{n:03d}_m{n}.sql": f"CREATE TABLE m{n} (id int);\n" for n in range(1, 6)})
    Migrator(fresh_db).apply_all(files[:1])
    reads: list[int] = []
    real_applied = Migrator.applied

    def counted(self: Migrator) -> Any:
        reads.append(1)
        return real_applied(self)

    monkeypatch.setattr(Migrator, "applied", counted)
    for m in files[1:]:
        assert failures(inputs(fresh_db, m)) == []
    assert len(reads) == 1  # four pending files, one read


def test_preview_does_not_connect_while_the_connection_is_unknown_or_unreachable(tmp_path: Path) -> None:
    (m,) = write(tmp_path, {"001_a.sql": "CREATE TABLE a (id int);\n"})
    dsn = "host=127.0.0.1 port=1 dbname=nowhere user=nobody password=x"
    assert failures(inputs(dsn, m, password=rpc.UNKNOWN)) == []  # the database is not created yet
    assert provider_module._applied_by_database == {}
    assert failures(inputs(dsn, m)) == []  # create() decides once the server is there
    assert list(provider_module._applied_by_database.values()) == [None]
