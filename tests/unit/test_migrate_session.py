"""The statement limits: configuration keys, backoff, and which statements are exempt from the
statement timeout or build a concurrent index (infra.migrate.session, infra.config)."""

from __future__ import annotations

import pytest

from infra.config import ConfigError, DictSource, load
from infra.migrate.session import (
    StatementLimits,
    concurrent_index_name,
    exempt_from_statement_timeout,
    retry_delays,
    session_setup,
)

pytestmark = pytest.mark.unit


def limits_of(**values: object) -> StatementLimits:
    return load(DictSource(dict(values)), "ns").migrations.limits


def test_defaults_a_lock_timeout_of_a_few_seconds_retries_and_no_statement_timeout() -> None:
    limits = limits_of()
    assert limits == StatementLimits(lock_timeout_ms=2000)
    assert limits.lock_timeout_ms == 2000 and limits.statement_timeout_ms is None and limits.attempts == 5
    assert session_setup(limits) == ["SET lock_timeout = 2000"]


def test_config_keys_set_every_limit() -> None:
    limits = limits_of(migrationLockTimeout=750, migrationLockRetries=2, migrationLockRetryDelay=200,
                       migrationStatementTimeout=600000)
    assert (limits.lock_timeout_ms, limits.lock_retries, limits.retry_delay_ms, limits.statement_timeout_ms) == (
        750, 2, 200, 600000)
    assert session_setup(limits) == ["SET lock_timeout = 750", "SET statement_timeout = 600000"]
    assert session_setup(limits_of(migrationLockTimeout=0)) == ["SET lock_timeout = 0"]  # waits as long as it takes


@pytest.mark.parametrize("key, value", [("migrationLockTimeout", "5s"), ("migrationLockTimeout", -1),
                                        ("migrationLockRetries", 101), ("migrationLockRetryDelay", "x"),
                                        ("migrationStatementTimeout", "10min")])
def test_bad_values_name_the_key_and_the_fix(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        limits_of(**{key: value})
    (problem,) = info.value.problems
    assert problem.startswith(f"ns:{key}: ") and ("milliseconds" in problem or "tried again" in problem), problem


def test_backoff_doubles_up_to_its_cap_and_limits_round_trip() -> None:
    limits = StatementLimits(lock_retries=5, retry_delay_ms=1000, retry_delay_max_ms=5000)
    assert retry_delays(limits) == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert retry_delays(StatementLimits(lock_retries=0)) == []
    assert StatementLimits.from_dict(limits.to_dict()) == limits
    assert StatementLimits.from_dict(None) == StatementLimits()  # a resource recorded before the limits
    with pytest.raises(ValueError, match="lock_retries"):
        StatementLimits(lock_retries=-1)


@pytest.mark.parametrize("statement, exempt", [
    ("CREATE INDEX CONCURRENTLY customers_email_idx ON customers (email)", True),
    ("create unique index concurrently if not exists x on t (a)", True),
    ("DROP INDEX CONCURRENTLY IF EXISTS x", True),
    ("REINDEX (VERBOSE) INDEX CONCURRENTLY x", True),
    ("ALTER TABLE p DETACH PARTITION c CONCURRENTLY", True),
    ("ALTER TABLE customers VALIDATE CONSTRAINT customers_org_fkey", True),
    ("CREATE INDEX x ON t (a)", False),
    ("ALTER TABLE customers ADD COLUMN concurrently int", False),
    ("UPDATE customers SET segment = 'VALIDATE CONSTRAINT'", False),
    ("DO $$ BEGIN ALTER TABLE t VALIDATE CONSTRAINT c; END $$", False),
    ("-- CREATE INDEX CONCURRENTLY\nSELECT 1", False),
])
def test_exempt_from_statement_timeout(statement: str, exempt: bool) -> None:
    assert exempt_from_statement_timeout(statement) is exempt


@pytest.mark.parametrize("statement, name", [
    ("CREATE INDEX CONCURRENTLY customers_email_idx ON customers (email)", "customers_email_idx"),
    ("create unique index concurrently if not exists public.\"My Idx\" on only t (a)", 'public."My Idx"'),
    ("CREATE INDEX CONCURRENTLY ON customers (email)", None),
    ("CREATE INDEX customers_email_idx ON customers (email)", None),
    ("DROP INDEX CONCURRENTLY customers_email_idx", None),
])
def test_concurrent_index_name(statement: str, name: str | None) -> None:
    assert concurrent_index_name(statement) == name
