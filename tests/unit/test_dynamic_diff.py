"""The diff logic of the dynamic providers, called directly, and their picklability.

`olds` are what the engine passes as the old state: the outputs of the last create/update, i.e. the
inputs plus the provider's computed outputs and the pickled provider under `__provider`. `news` are
the new inputs (with `__provider`).
"""

from __future__ import annotations

import base64
import pickle
from typing import Any

import dill
import psycopg
import pytest
from pulumi.dynamic import DiffResult
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc

from infra.config import migration_fixes
from infra.dynamic.base import PROVIDER_KEY, DiffingProvider
from infra.dynamic.cron_job import CronJobProvider
from infra.dynamic.migration import MigrationProvider
from infra.migrate import ChecksumMismatchError, checksum_of

pytestmark = pytest.mark.unit

OLD_UP = "CREATE TABLE t (id int);\n"
NEW_UP = "CREATE TABLE t (id bigint);\n"
CONNECTION = {
    "host": "127.0.0.1", "port": 55432, "dbname": "customer_insights", "user": "ci_owner",
    "password": "old-password-0123456789", "sslmode": "disable",
}
OTHER_CONNECTION = {
    "host": "db.internal", "port": 6543, "dbname": "insights", "user": "someone_else",
    "password": "new-password-9876543210", "sslmode": "verify-full",
}


def migration_inputs(**overrides: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        **CONNECTION,
        PROVIDER_KEY: "pickled-provider-v1",
        "version": "003",
        "name": "create_customers",
        "filename": "003_create_customers.sql",
        "checksum": checksum_of(OLD_UP),
        "up_sql": OLD_UP,
        "down_sql": "DROP TABLE t;\n",
        "transactional": True,
        "accept_checksum": False,
        "keep_on_destroy": False,
        "allow_out_of_order": False,
        "fixes": migration_fixes("customer-insights-db"),
        "applied_at": None,
        "duration_ms": None,
        "applied_by": None,
        "adopted": None,
    }
    props.update(overrides)
    return props


def migration_state(**overrides: Any) -> dict[str, Any]:
    """The state after a create: the inputs plus what `create` computed."""
    computed = {"applied_at": "2026-01-02T03:04:05+00:00", "duration_ms": 12, "applied_by": "ci_owner",
                "adopted": False}
    return migration_inputs(**{**computed, **overrides})


def cron_inputs(**overrides: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        **CONNECTION,
        "user": "postgres",
        PROVIDER_KEY: "pickled-provider-v1",
        "job_name": "customer_insights-delete-expired-refresh-tokens",
        "schedule": "*/15 * * * *",
        "command": "CALL delete_expired_refresh_tokens(batch_size => 5000)",
        "database": "customer_insights",
        "run_as": "ci_token_cleanup",
        "active": True,
        "job_id": None,
    }
    props.update(overrides)
    return props


def cron_state(**overrides: Any) -> dict[str, Any]:
    return cron_inputs(**{"job_id": 7, **overrides})


def assert_no_changes(result: DiffResult) -> None:
    assert result.changes is False
    assert not result.replaces


def assert_update(result: DiffResult) -> None:
    assert result.changes is True
    assert result.replaces == []


def assert_replace(result: DiffResult, *keys: str) -> None:
    assert result.changes is True
    assert result.replaces is not None
    assert sorted(result.replaces) == sorted(keys)


# ---------------------------------------------------------------------------------------------- Migration


def diff_migration(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    return MigrationProvider().diff("003", olds, news)


def test_migration_unchanged() -> None:
    assert_no_changes(diff_migration(migration_state(), migration_inputs()))


def test_migration_provider_code_change_is_no_change() -> None:
    assert_no_changes(diff_migration(migration_state(), migration_inputs(**{PROVIDER_KEY: "pickled-provider-v2"})))


# New connection details (a rotated password) are an in-place update that runs nothing: the state
# must hold the credentials that destroy and refresh will connect with.
@pytest.mark.parametrize("key", sorted(CONNECTION))
def test_migration_connection_change_is_an_update(key: str) -> None:
    assert_update(diff_migration(migration_state(), migration_inputs(**{key: OTHER_CONNECTION[key]})))


def test_migration_all_connection_details_and_provider_changed_is_an_update() -> None:
    news = migration_inputs(**OTHER_CONNECTION, **{PROVIDER_KEY: "pickled-provider-v2"})
    assert_update(diff_migration(migration_state(), news))


def test_migration_unknown_password_during_preview_is_an_update() -> None:
    # `pulumi preview` with a password that is not known yet (e.g. a regenerated RandomPassword).
    assert_update(diff_migration(migration_state(), migration_inputs(password=rpc.UNKNOWN)))


def test_migration_checksum_change_raises_naming_file_and_both_checksums() -> None:
    old, new = checksum_of(OLD_UP), checksum_of(NEW_UP)
    with pytest.raises(ChecksumMismatchError) as info:
        diff_migration(migration_state(), migration_inputs(up_sql=NEW_UP, checksum=new))
    error = info.value
    assert (error.filename, error.version, error.recorded, error.current) == (
        "003_create_customers.sql", "003", old, new
    )
    message = str(error)
    assert "003_create_customers.sql" in message
    assert old in message
    assert new in message
    assert 'add "003" to the stack config `customer-insights-db:acceptChecksums`' in message  # how to accept it


def test_migration_check_refuses_an_edited_applied_file_with_the_message_alone() -> None:
    # The engine shows a check failure as the resource's message; an exception would show the
    # provider host's traceback first.
    old, new = checksum_of(OLD_UP), checksum_of(NEW_UP)
    result = MigrationProvider().check(migration_inputs(), migration_inputs(up_sql=NEW_UP, checksum=new))
    assert len(result.failures) == 1
    reason = result.failures[0].reason
    assert "003_create_customers.sql" in reason and old in reason and new in reason
    assert 'add "003" to the stack config `customer-insights-db:acceptChecksums`' in reason
    assert "Traceback" not in reason


@pytest.mark.parametrize(
    ("olds", "news"),
    [
        ({}, migration_inputs()),  # pending: nothing recorded yet
        (migration_inputs(), migration_inputs()),
        (migration_inputs(), migration_inputs(up_sql=NEW_UP, checksum=checksum_of(NEW_UP), accept_checksum=True)),
    ],
    ids=["pending", "unchanged", "accepted-edit"],
)
def test_migration_check_passes(olds: dict[str, Any], news: dict[str, Any]) -> None:
    result = MigrationProvider().check(olds, news)
    assert result.failures == []
    assert result.inputs == news


def test_migration_checksum_change_raises_even_with_other_changes() -> None:
    news = migration_inputs(up_sql=NEW_UP, checksum=checksum_of(NEW_UP), keep_on_destroy=True, **OTHER_CONNECTION)
    with pytest.raises(ChecksumMismatchError):
        diff_migration(migration_state(), news)


def test_migration_accepted_checksum_change_is_an_update_not_a_replace() -> None:
    news = migration_inputs(up_sql=NEW_UP, checksum=checksum_of(NEW_UP), accept_checksum=True)
    assert_update(diff_migration(migration_state(), news))


def test_migration_statement_limits_are_no_change() -> None:
    # A stack recorded before the limits existed, and a change of the lock timeout: nothing to update.
    limits = {"lock_timeout_ms": 1000, "statement_timeout_ms": None, "lock_retries": 2, "retry_delay_ms": 500,
              "retry_delay_max_ms": 30000}
    assert_no_changes(diff_migration(migration_state(), migration_inputs(limits=limits)))
    assert_no_changes(diff_migration(migration_state(limits={**limits, "lock_timeout_ms": 2000}),
                                     migration_inputs(limits=limits)))


def test_migration_accept_checksum_alone_is_no_change() -> None:
    assert_no_changes(diff_migration(migration_state(), migration_inputs(accept_checksum=True)))
    assert_no_changes(diff_migration(migration_state(accept_checksum=True), migration_inputs()))


@pytest.mark.parametrize(
    "overrides",
    [
        {"down_sql": "DROP TABLE IF EXISTS t;\n"},
        {"down_sql": None},
        {"keep_on_destroy": True},
        {"transactional": False},
    ],
    ids=["down_sql-edited", "down_sql-removed", "keep_on_destroy", "transactional"],
)
def test_migration_in_place_updates(overrides: dict[str, Any]) -> None:
    assert_update(diff_migration(migration_state(), migration_inputs(**overrides)))


def test_migration_down_sql_added_is_an_update() -> None:
    assert_update(diff_migration(migration_state(down_sql=None), migration_inputs()))


def test_migration_keep_on_destroy_back_to_false_is_an_update() -> None:
    assert_update(diff_migration(migration_state(keep_on_destroy=True), migration_inputs(keep_on_destroy=False)))


@pytest.mark.parametrize(
    ("key", "value"),
    [("version", "004"), ("name", "create_clients"), ("filename", "003_create_clients.sql")],
)
def test_migration_identity_change_is_a_replacement(key: str, value: str) -> None:
    assert_replace(diff_migration(migration_state(), migration_inputs(**{key: value})), key)


def test_migration_computed_outputs_are_not_changes() -> None:
    # the state has applied_at/duration_ms/applied_by/adopted, the new inputs have None for them
    assert_no_changes(diff_migration(migration_state(adopted=True), migration_inputs()))


# ---------------------------------------------------------------------------------------------- CronJob


def diff_cron(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    return CronJobProvider().diff("7", olds, news)


def test_cron_unchanged() -> None:
    # job_id: 7 in the state, None in the inputs
    assert_no_changes(diff_cron(cron_state(), cron_inputs()))


def test_cron_provider_code_change_is_no_change() -> None:
    assert_no_changes(diff_cron(cron_state(), cron_inputs(**{PROVIDER_KEY: "pickled-provider-v2"})))


@pytest.mark.parametrize("key", sorted(CONNECTION))
def test_cron_connection_change_is_an_update(key: str) -> None:
    assert_update(diff_cron(cron_state(), cron_inputs(**{key: OTHER_CONNECTION[key]})))


def test_cron_unknown_password_during_preview_is_an_update() -> None:
    assert_update(diff_cron(cron_state(), cron_inputs(password=rpc.UNKNOWN)))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("schedule", "0 3 * * *"),
        ("command", "CALL delete_expired_refresh_tokens(batch_size => 250)"),
        ("active", False),
        ("database", "insights"),
        ("run_as", "ci_other_role"),
    ],
)
def test_cron_in_place_updates(key: str, value: Any) -> None:
    assert_update(diff_cron(cron_state(), cron_inputs(**{key: value})))


def test_cron_schedule_command_and_active_together_is_one_update() -> None:
    news = cron_inputs(schedule="0 3 * * *", command="CALL x()", active=False, **OTHER_CONNECTION)
    assert_update(diff_cron(cron_state(), news))


def test_cron_job_name_change_is_a_replacement() -> None:
    result = diff_cron(cron_state(), cron_inputs(job_name="renamed-job"))
    assert_replace(result, "job_name")
    # pg_cron job names are unique per user: the old job goes before the new one is scheduled
    assert result.delete_before_replace is True


def test_cron_job_name_and_schedule_change_replaces_for_the_name_only() -> None:
    assert_replace(diff_cron(cron_state(), cron_inputs(job_name="renamed-job", schedule="0 3 * * *")), "job_name")


# ---------------------------------------------------------------------------------------------- pickling


PROVIDERS = [MigrationProvider, CronJobProvider]


@pytest.mark.parametrize("cls", PROVIDERS, ids=lambda c: c.__name__)
def test_provider_pickles_with_pickle(cls: type[DiffingProvider]) -> None:
    provider = cls()
    restored = pickle.loads(pickle.dumps(provider))
    assert type(restored) is cls
    assert vars(restored) == {}  # no connection, client or cache captured


@pytest.mark.parametrize("cls", PROVIDERS, ids=lambda c: c.__name__)
def test_provider_serializes_like_pulumi_does(cls: type[DiffingProvider]) -> None:
    """`serialize_provider` is what `pulumi.dynamic.Resource` stores under `__provider` (dill, base64)."""
    encoded = serialize_provider(cls())
    payload = base64.b64decode(encoded)
    restored = dill.loads(payload)
    assert type(restored) is cls
    assert vars(restored) == {}
    # by reference to its importable class, not by value (no code, no module globals such as clients)
    assert cls.__module__.encode() in payload
    assert b"psycopg" not in payload
    assert len(payload) < 512, len(payload)


@pytest.mark.parametrize("cls", PROVIDERS, ids=lambda c: c.__name__)
def test_provider_dill_serialization_is_deterministic(cls: type[DiffingProvider]) -> None:
    # otherwise `__provider` would differ on every run (harmless for the diff, noisy in the state)
    assert serialize_provider(cls()) == serialize_provider(cls())


@pytest.mark.parametrize("cls", PROVIDERS, ids=lambda c: c.__name__)
def test_creating_diffing_and_pickling_a_provider_opens_no_connection(
    cls: type[DiffingProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_connect(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a provider connected while being created, diffed or pickled")

    monkeypatch.setattr(psycopg, "connect", no_connect)
    monkeypatch.setattr(psycopg.Connection, "connect", no_connect)
    provider = cls()
    olds, news = (migration_state(), migration_inputs()) if cls is MigrationProvider else (cron_state(), cron_inputs())
    provider.diff("1", olds, news)
    dill.loads(base64.b64decode(serialize_provider(provider)))
    pickle.loads(pickle.dumps(provider))
