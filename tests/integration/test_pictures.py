"""docs/er-diagram.dot is what `scripts/preview_pictures.py er` makes from a database migrated with
sql/: a migration that changes the schema without regenerating the picture fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.migrate import Migrator, load_migrations
from scripts.preview_pictures import er_dot

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_er_diagram_is_current(fresh_db: str) -> None:
    migrator = Migrator(fresh_db)
    for migration in load_migrations(REPO / "sql"):
        migrator.apply(migration)
    current = er_dot(fresh_db)
    committed = (REPO / "docs" / "er-diagram.dot").read_text()
    assert current == committed, (
        "docs/er-diagram.dot is out of date: regenerate it with "
        "`python scripts/preview_pictures.py er --database-url URL --png` on a database migrated with sql/"
    )
    for table in ("organizations", "users", "customers", "customer_interactions", "refresh_tokens"):
        assert f'"{table}" [label=' in current
