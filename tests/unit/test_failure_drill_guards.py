"""The words of the lost-volume check and of the stack claim (their behaviour against real Docker and
PostgreSQL: tests/e2e/test_failure_drills.py)."""

from __future__ import annotations

import pytest

from infra.dynamic.data_volume import DataVolumeProvider, gone_message
from infra.dynamic.stack_claim import _parse, claim_role, comment

pytestmark = pytest.mark.unit

VOLUME = {"volume": "postgres-s-data", "volume_urn": "urn:pulumi:s::p::t$docker:index/volume:Volume::postgres-data",
          "container_urn": "urn:pulumi:s::p::t$docker:index/container:Container::postgres", "docker_host": ""}


def test_unprotected_loss_names_the_state_delete_that_starts_again_empty() -> None:
    message = gone_message({**VOLUME, "protected": False})
    assert f"`pulumi state delete '{VOLUME['volume_urn']}' --target-dependents --yes`" in message
    assert "--force" not in message and message.endswith("Nothing was changed.")


def test_protected_loss_says_the_data_is_gone_and_points_to_the_backup() -> None:
    message = gone_message({**VOLUME, "protected": True})
    assert "protects its data (protectData): nothing is recreated empty" in message
    assert "Restore it from your backup" in message and f"--target '{VOLUME['container_urn']}'" in message
    assert f"`pulumi state delete '{VOLUME['volume_urn']}' --target-dependents --force --yes`" in message


def test_a_stack_being_created_is_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("infra.dynamic.data_volume.volume_missing", lambda *_: True)
    assert DataVolumeProvider().check({}, {**VOLUME, "protected": False}).failures == []
    assert DataVolumeProvider().check(VOLUME, {**VOLUME, "protected": False}).failures


def test_claim_comment_round_trips() -> None:
    roles = ["p_owner", "p_app", "p_ro", "p_clean"]
    props = {"stack": "proj/team-a", "database": "insights", "roles": roles}
    assert _parse(comment(props)) == {"stack": "proj/team-a", "database": "insights",
                                      "roles": "p_owner,p_app,p_ro,p_clean"}
    assert claim_role(roles) == "p_owner_claim"
