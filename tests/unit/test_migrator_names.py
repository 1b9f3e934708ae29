"""The program's migration sessions take the CLI's lock (a CLI run and a `pulumi up` serialise) under its names."""

from __future__ import annotations

from typing import Any

import pytest

from infra.dynamic import adoption, migration, migration_checkpoint
from infra.migrate import DEFAULT_APPLICATION_NAME, DEFAULT_LOCK_NAME, Migrator, lock_key
from infra.migration_identity import LOCK_NAME as CLI_LOCK_NAME
from infra.migrations_cli import _migrator, build_parser

PROPS = {"host": "db.internal", "port": 5432, "dbname": "insights", "user": "ci_owner", "password": "pw"}


def test_the_library_defaults_name_no_caller() -> None:
    plain = Migrator("dbname=x")
    assert (plain.lock_name, plain.application_name) == (DEFAULT_LOCK_NAME, DEFAULT_APPLICATION_NAME)
    assert "customer-insights" not in DEFAULT_LOCK_NAME + DEFAULT_APPLICATION_NAME
    assert lock_key(DEFAULT_LOCK_NAME) != lock_key(CLI_LOCK_NAME)


def test_the_migration_providers_and_the_cli_take_one_lock_under_one_name() -> None:
    parser = build_parser()
    cli = _migrator(parser.parse_args(["status", "--database-url", "dbname=x"]), parser)
    for migrator in (cli, migration._migrator(PROPS), migration_checkpoint._migrator(PROPS)):
        assert migrator.lock_name == CLI_LOCK_NAME == "customer-insights:schema_migrations"
        assert migrator.application_name == "customer-insights-migrations"
    assert lock_key(CLI_LOCK_NAME) == -4344450105921422089


def test_adoption_records_the_history_under_the_cli_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, dict[str, Any]] = {}

    def fake(name: str, result: Any) -> Any:
        def call(*_args: Any, **kwargs: Any) -> Any:
            calls[name] = kwargs
            return result
        return call

    class Plan:
        def summary(self) -> str:
            return "nothing"

    monkeypatch.setattr(adoption.adopt, "read_plan", fake("read_plan", Plan()))
    monkeypatch.setattr(adoption.adopt, "tables", fake("tables", []))
    monkeypatch.setattr(adoption.adopt, "record", fake("record", []))
    adoption.AdoptedHistoryProvider().create({**PROPS, "tool": "knex", "files": []})
    assert calls["record"]["lock_name"] == CLI_LOCK_NAME
    assert {kwargs["application_name"] for kwargs in calls.values()} == {"customer-insights-adoption"}
