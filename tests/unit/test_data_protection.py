"""protectData and keepDataOnDestroy: their defaults, what they reach in the program's graph, and the container
host preflight's place (before anything is declared). The behaviour itself: tests/e2e/test_failure_drills.py."""

from __future__ import annotations

from typing import Any

import pytest

from devsupport.program_mocks import (
    CONTAINER,
    DATA_PROTECTION_COMPONENT,
    DATABASE,
    MIGRATION,
    MIGRATIONS_COMPONENT,
    RANDOM_PASSWORD,
    ROLE,
    STACK_CLAIM,
    VOLUME,
    ProgramHarness,
)
from infra.config import ConfigError, ContainerServer, DictSource, load
from tests.unit.test_program_graph import CONTAINER_CONFIG, EXTERNAL_CONFIG

pytestmark = pytest.mark.unit
NAMESPACE = "customer-insights-db"
DATA_HOLDERS = {VOLUME, DATABASE, MIGRATION, MIGRATIONS_COMPONENT}


@pytest.mark.parametrize(("stack", "value", "expected"), [
    ("dev", None, False),  # the throwaway local stack tears down completely
    ("staging", None, True),
    ("prod", None, True),
    ("", None, True),  # unknown stack: the safe side
    ("prod", "false", False),
    ("dev", "true", True),
])
def test_protect_data_defaults_to_true_except_on_dev(stack: str, value: str | None, expected: bool) -> None:
    values = {} if value is None else {"protectData": value}
    assert load(DictSource(values), NAMESPACE, stack=stack).protect_data is expected


def test_a_bad_protect_data_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match="customer-insights-db:protectData: 'yes' is not a boolean"):
        load(DictSource({"protectData": "yes"}), NAMESPACE, stack="prod")


def run(config: dict[str, str], secret_keys: tuple[str, ...] = ()) -> Any:
    return ProgramHarness().run(config, secret_keys=secret_keys)


def test_protected_stack_protects_what_holds_data_and_guards_destroy_with_everything() -> None:
    result = run(CONTAINER_CONFIG)
    protected = {r.type for r in result.resources if r.protect}
    assert protected == DATA_HOLDERS | {DATA_PROTECTION_COMPONENT}
    assert all(m.protect for m in result.migrations())
    # Replaceable without data loss: the container (image change), passwords and roles (rotation).
    for type_ in (CONTAINER, RANDOM_PASSWORD, ROLE):
        assert not any(r.protect for r in result.of_type(type_)), type_
    # The guard waits for every other resource: destroy has to delete it first, and stops there.
    guard = result.one(DATA_PROTECTION_COMPONENT, "protectData")
    custom = {r.urn for r in result.resources if r.custom}
    assert custom - result.upstream_of(guard) == set()


def test_unprotected_stack_protects_nothing() -> None:
    result = run({**CONTAINER_CONFIG, "protectData": "false"})
    assert not [r.urn for r in result.resources if r.protect]
    assert len(result.of_type(DATA_PROTECTION_COMPONENT)) == 1  # kept: flipping the flag changes no resource


def test_external_mode_protects_the_database_and_migrations(preflight) -> None:
    result = run(EXTERNAL_CONFIG, secret_keys=("externalAdminPassword",))
    assert {r.type for r in result.resources if r.protect} == DATA_HOLDERS - {VOLUME} | {DATA_PROTECTION_COMPONENT}


@pytest.mark.parametrize("keep", [True, False])
def test_keep_data_on_destroy_reaches_the_volume_database_roles_migrations_and_claim(preflight, keep: bool) -> None:
    value = "true" if keep else "false"
    container = run({**CONTAINER_CONFIG, "keepDataOnDestroy": value})
    roles = {(ROLE, r.name) for r in container.of_type(ROLE)}
    assert len(roles) == 4
    retained = {(r.type, r.name) for r in container.resources if r.retain_on_delete}
    assert retained == ({(VOLUME, "postgres-data"), (DATABASE, "app-db"), *roles} if keep else set())
    assert container.migrations() and all(m["keep_on_destroy"] is keep for m in container.migrations())
    external = run({**EXTERNAL_CONFIG, "keepDataOnDestroy": value}, secret_keys=("externalAdminPassword",))
    assert external.one(STACK_CLAIM, "stack-claim")["keep_on_destroy"] is keep


def test_container_host_is_checked_before_anything_is_declared(container_host_preflight) -> None:
    container_host_preflight.clear()
    run({**CONTAINER_CONFIG, "protectData": "false"})
    assert container_host_preflight == [{
        "server": ContainerServer(image=CONTAINER_CONFIG["image"], host_port=int(CONTAINER_CONFIG["hostPort"]),
                                  bind_address="127.0.0.1", superuser="postgres", docker_host=None),
        "container": "postgres-unit",
    }]
