"""adoptFrom in the program's resource graph (under mocks): what is checked before anything is declared,
and the order the engine follows (roles' passwords, then the history record, then the first migration)."""

from __future__ import annotations

from typing import Any

import pytest

import infra.preflight
from devsupport.program_mocks import ADOPTED_HISTORY as HISTORY
from devsupport.program_mocks import CRON_JOB, GRANT, MIGRATION, ROLE, ROLE_PASSWORD, FakePreflight, ProgramHarness
from infra.preflight import PreflightError

pytestmark = pytest.mark.unit

ADOPTING = {
    "mode": "external", "externalHost": "db.example.internal", "externalAdminUser": "admin",
    "externalAdminPassword": "ext-admin-secret-0123456789", "adoptFrom": "knex",
    "adoptAccept": '["index customers_email_idx"]', "adoptScratchUrl": "postgresql://scratch-secret@scratch/postgres",
}


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[dict[str, Any]]]:
    calls: dict[str, list[dict[str, Any]]] = {"adoptable": [], "schema": []}

    def adoptable(**kwargs: Any) -> frozenset[str]:
        calls["adoptable"].append(kwargs)
        return frozenset({"ci_owner"})

    monkeypatch.setattr(infra.preflight, "check_adoptable", adoptable)
    monkeypatch.setattr(infra.preflight, "check_adoption_schema", lambda **kw: calls["schema"].append(kw))
    return calls


def test_the_adoption_is_checked_before_anything_and_recorded_before_the_first_migration(
        preflight: FakePreflight, checks: dict[str, list[dict[str, Any]]]) -> None:
    result = ProgramHarness().run(ADOPTING, secret_keys=["externalAdminPassword", "adoptScratchUrl"])
    assert [c["owner"] for c in checks["adoptable"]] == ["ci_owner"]
    (schema,) = checks["schema"]
    assert (schema["adoption"].tool, schema["adoption"].accept, schema["scratch_url"]) == (
        "knex", frozenset({"index customers_email_idx"}), "postgresql://scratch-secret@scratch/postgres")
    assert [m.version for m in schema["files"]] == [r["version"] for r in result.migrations()]

    history = result.one(HISTORY, "adopted-history")
    assert history["user"] == "ci_owner" and history.is_secret("password")
    passwords = result.of_type(ROLE_PASSWORD)
    assert len(passwords) == 4 and all(p.is_secret("password") for p in passwords)
    assert {p.urn for p in passwords} <= result.upstream_of(history)
    first = result.migrations()[0]
    assert history.urn in result.upstream_of(first)
    assert {r.name for r in result.of_type(GRANT) if "adopted-tables" in r.name} == {
        "table-privileges-app-adopted-tables", "table-privileges-readonly-adopted-tables"}
    assert {r.urn for r in result.of_type(ROLE) if r.name in ("app-db-owner", "app-db-readonly")} <= (
        result.upstream_of(result.cron_job()))
    assert result.of_type(CRON_JOB) and result.of_type(MIGRATION)


def test_without_adoption_nothing_of_it_is_declared(preflight: FakePreflight,
                                                    checks: dict[str, list[dict[str, Any]]]) -> None:
    config = {k: v for k, v in ADOPTING.items() if not k.startswith("adopt")}
    result = ProgramHarness().run(config, secret_keys=["externalAdminPassword"])
    assert checks == {"adoptable": [], "schema": []}
    assert not result.of_type(HISTORY) and not result.of_type(ROLE_PASSWORD)


def test_a_refused_adoption_declares_nothing(preflight: FakePreflight, monkeypatch: pytest.MonkeyPatch,
                                            checks: dict[str, list[dict[str, Any]]]) -> None:
    def refuse(**_: Any) -> None:
        raise PreflightError("Adoption refused: ... Nothing was changed.")

    monkeypatch.setattr(infra.preflight, "check_adoption_schema", refuse)
    harness = ProgramHarness()
    with pytest.raises(PreflightError, match="Adoption refused"):
        harness.run(ADOPTING, secret_keys=["externalAdminPassword", "adoptScratchUrl"])
    assert harness.mocks.created == [] and harness.monitor.registrations == []
