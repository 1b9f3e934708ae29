"""infra.config.load: defaults, and every validation error naming its key and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from infra.config import (
    CleanupJobSettings,
    ConfigError,
    ContainerServer,
    ExternalServer,
    MigrationSettings,
    RehearsalSettings,
    RoleNames,
    ScratchSettings,
    StackConfig,
    load,
    validate_cron_schedule,
)
from infra.config import DictSource as _DictSource

pytestmark = pytest.mark.unit

NAMESPACE = "customer-insights-db"


def load_dict(values: dict[str, Any]) -> StackConfig:
    return load(_DictSource(values), NAMESPACE)


def problems_of(values: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_dict(values)
    return info.value.problems


def only_problem(values: dict[str, Any], key: str) -> str:
    """The single problem `values` cause; it must be reported under `namespace:key`."""
    problems = problems_of(values)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{NAMESPACE}:{key}: "), problems[0]
    return problems[0]


# ---------------------------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    cfg = load_dict({})
    assert cfg == StackConfig(
        mode="container",
        database="customer_insights",
        roles=RoleNames(owner="ci_owner", app="ci_app", readonly="ci_readonly", cleanup="ci_token_cleanup"),
        password_length=32,
        server=ContainerServer(
            image="customer-insights/postgres-cron:15", host_port=55432, bind_address="127.0.0.1",
            superuser="postgres",
        ),
        migrations=MigrationSettings(directory="sql", accept_checksums=frozenset()),
        cleanup_job=CleanupJobSettings(
            name="customer_insights-delete-expired-refresh-tokens", schedule="*/15 * * * *", enabled=True,
            batch_size=5000,
        ),
        keep_data_on_destroy=False,
    )


def test_empty_strings_mean_the_default() -> None:
    assert load_dict({"hostPort": "", "databaseName": "", "mode": ""}) == load_dict({})


def test_explicit_values_are_used() -> None:
    cfg = load_dict({
        "databaseName": "insights", "rolePrefix": "cit", "passwordLength": "40", "hostPort": "6000",
        "bindAddress": "127.0.0.2", "image": "registry.local/pg:15", "cleanupSchedule": "0 3 * * *",
        "cleanupEnabled": False, "cleanupBatchSize": "250", "cleanupJobName": "tokens",
        "acceptChecksums": ["003", "0010"], "keepDataOnDestroy": True, "migrationsDir": "db/sql",
    })
    assert cfg.database == "insights"
    assert cfg.roles.all() == ("cit_owner", "cit_app", "cit_readonly", "cit_token_cleanup")
    assert cfg.password_length == 40
    assert cfg.server == ContainerServer("registry.local/pg:15", 6000, "127.0.0.2", "postgres")
    assert cfg.cleanup_job == CleanupJobSettings("tokens", "0 3 * * *", False, 250)
    assert cfg.migrations == MigrationSettings("db/sql", frozenset({"003", "0010"}))
    assert cfg.keep_data_on_destroy is True


def test_cleanup_job_name_defaults_to_the_database_name() -> None:
    assert load_dict({"databaseName": "crm"}).cleanup_job.name == "crm-delete-expired-refresh-tokens"


# ---------------------------------------------------------------------------------------------- ports


@pytest.mark.parametrize("value", [0, 70000, "abc", "-1", "65536", "5432.5"])
def test_bad_host_port(value: object) -> None:
    problem = only_problem({"hostPort": value}, "hostPort")
    assert "use a TCP port between 1 and 65535" in problem


@pytest.mark.parametrize("value", ["abc", 0, 70000])
def test_bad_external_port(value: object) -> None:
    problem = only_problem(
        {"mode": "external", "externalHost": "db.internal", "externalAdminPassword": "s3cret",
         "externalPort": value},
        "externalPort",
    )
    assert "use a TCP port between 1 and 65535" in problem


def test_non_numeric_port_says_so() -> None:
    assert "'abc' is not a whole number" in only_problem({"hostPort": "abc"}, "hostPort")


@pytest.mark.parametrize("value", [1, 65535, "5432"])
def test_port_bounds_are_accepted(value: object) -> None:
    assert load_dict({"hostPort": value}).server == ContainerServer(
        "customer-insights/postgres-cron:15", int(str(value)), "127.0.0.1", "postgres"
    )


# ---------------------------------------------------------------------------------------------- mode


@pytest.mark.parametrize("value", ["kubernetes", "Container", "docker"])
def test_unknown_mode(value: str) -> None:
    problem = only_problem({"mode": value}, "mode")
    assert repr(value) in problem
    assert "use 'container' or 'external'" in problem


# ---------------------------------------------------------------------------------------------- identifiers


@pytest.mark.parametrize("value", ["Bad-Name", "customerInsights", "1insights", "a" * 64, "drop table"])
def test_invalid_database_name(value: str) -> None:
    problem = only_problem({"databaseName": value}, "databaseName")
    assert "not a plain PostgreSQL identifier" in problem
    assert "lower-case letters, digits and underscores" in problem


@pytest.mark.parametrize("value", ["CI", "Ci", "c-i", "9ci"])
def test_invalid_role_prefix(value: str) -> None:
    problem = only_problem({"rolePrefix": value}, "rolePrefix")
    assert "not a plain PostgreSQL identifier" in problem
    assert "lower-case letters" in problem


def test_role_prefix_too_long_for_the_longest_role_name() -> None:
    # "<prefix>_token_cleanup" is the longest role name: 14 characters after the prefix.
    assert load_dict({"rolePrefix": "p" * 49}).roles.cleanup == "p" * 49 + "_token_cleanup"
    problem = only_problem({"rolePrefix": "p" * 50}, "rolePrefix")
    assert "longer than 63 characters" in problem
    assert "use a shorter prefix" in problem


def test_role_prefix_making_every_role_too_long_reports_each() -> None:
    problems = problems_of({"rolePrefix": "p" * 60})
    assert len(problems) == 4
    assert all(p.startswith(f"{NAMESPACE}:rolePrefix: ") and "shorter prefix" in p for p in problems)


# ---------------------------------------------------------------------------------------------- passwords


@pytest.mark.parametrize("value", [19, 8, 129, 1000, "long"])
def test_bad_password_length(value: object) -> None:
    problem = only_problem({"passwordLength": value}, "passwordLength")
    assert "generated passwords need 20 to 128 characters" in problem


@pytest.mark.parametrize("value", [20, 128])
def test_password_length_bounds_are_accepted(value: int) -> None:
    assert load_dict({"passwordLength": value}).password_length == value


# ---------------------------------------------------------------------------------------------- cron


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("*/5 * * * * *", "has 6 fields; pg_cron takes the 5 standard cron fields"),
        ("61 * * * *", "is not a valid cron expression"),
        ("every day", "has 2 fields; pg_cron takes the 5 standard cron fields"),
        ("0 24 * * *", "is not a valid cron expression"),
        ("*/15 * * *", "has 4 fields"),
    ],
)
def test_bad_cleanup_schedule(schedule: str, expected: str) -> None:
    problem = only_problem({"cleanupSchedule": schedule}, "cleanupSchedule")
    assert repr(schedule) in problem
    assert expected in problem
    assert "e.g. '*/15 * * * *'" in problem  # the fix: what a valid schedule looks like


@pytest.mark.parametrize(
    "schedule",
    [
        "*/15 * * * *",
        "* * * * *",
        "0 3 * * *",
        "30 2 * * 1-5",
        "0 */6 * * *",
        "15,45 9-17 * * mon-fri",
        "0 0 1 * *",
        "0 12 * jan,jul *",
        "0 0 * * 0",
        "0 0 * * 7",
        "0 4 * * sun",
        "5-55/10 * * * *",
    ],
)
def test_validate_cron_schedule_accepts_typical_pg_cron_schedules(schedule: str) -> None:
    assert validate_cron_schedule(schedule) is None
    assert load_dict({"cleanupSchedule": schedule}).cleanup_job.schedule == schedule


@pytest.mark.parametrize("schedule", ["", "   ", "* * *", "0 0 0 * *", "*/0 * * * *", "0 0 * 13 *"])
def test_validate_cron_schedule_rejects(schedule: str) -> None:
    message = validate_cron_schedule(schedule)
    assert message is not None
    assert "e.g. '*/15 * * * *'" in message


# ---------------------------------------------------------------------------------------------- bind address


@pytest.mark.parametrize("address", ["0.0.0.0", "192.168.1.10", "::", "10.0.0.1"])
def test_non_loopback_bind_address_is_rejected(address: str) -> None:
    problem = only_problem({"bindAddress": address}, "bindAddress")
    assert "not a loopback address" in problem
    assert "exposeBeyondLoopback: true" in problem


@pytest.mark.parametrize("address", ["0.0.0.0", "192.168.1.10"])
def test_non_loopback_bind_address_allowed_with_expose_beyond_loopback(address: str) -> None:
    cfg = load_dict({"bindAddress": address, "exposeBeyondLoopback": True})
    assert isinstance(cfg.server, ContainerServer)
    assert cfg.server.bind_address == address
    # "false" as a string (how `pulumi config set` stores it) does not allow it
    only_problem({"bindAddress": address, "exposeBeyondLoopback": "false"}, "bindAddress")


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1"])
def test_loopback_bind_addresses_are_accepted(address: str) -> None:
    cfg = load_dict({"bindAddress": address})
    assert isinstance(cfg.server, ContainerServer)
    assert cfg.server.bind_address == address


def test_bind_address_must_be_an_ip_address() -> None:
    problem = only_problem({"bindAddress": "localhost"}, "bindAddress")
    assert "not an IP address" in problem
    assert "use 127.0.0.1" in problem


def test_bad_boolean() -> None:
    problem = only_problem({"exposeBeyondLoopback": "yes"}, "exposeBeyondLoopback")
    assert "set it to true or false" in problem


# ---------------------------------------------------------------------------------------------- external mode


def test_external_mode_requires_host_and_admin_password() -> None:
    problems = problems_of({"mode": "external"})
    assert len(problems) == 2, problems
    by_key = {p.split(": ", 1)[0]: p for p in problems}
    assert sorted(by_key) == [f"{NAMESPACE}:externalAdminPassword", f"{NAMESPACE}:externalHost"]
    assert "the managed server's host name or address" in by_key[f"{NAMESPACE}:externalHost"]
    assert "pulumi config set --secret externalAdminPassword" in by_key[f"{NAMESPACE}:externalAdminPassword"]


@pytest.mark.parametrize("missing", ["externalHost", "externalAdminPassword"])
def test_external_mode_each_required_key(missing: str) -> None:
    values = {"mode": "external", "externalHost": "db.internal", "externalAdminPassword": "s3cret"}
    values[missing] = ""
    only_problem(values, missing)


def test_external_mode_defaults() -> None:
    cfg = load_dict({"mode": "external", "externalHost": "db.internal", "externalAdminPassword": "s3cret"})
    assert cfg.mode == "external"
    assert cfg.server == ExternalServer(
        host="db.internal", port=5432, admin_user="postgres", admin_password_key="externalAdminPassword",
        sslmode="require", admin_database="postgres", superuser=False,
    )


def test_external_server_never_holds_the_password() -> None:
    cfg = load_dict({"mode": "external", "externalHost": "db.internal", "externalAdminPassword": "s3cret"})
    assert "s3cret" not in repr(cfg)


def test_container_only_keys_are_not_validated_in_external_mode() -> None:
    cfg = load_dict({
        "mode": "external", "externalHost": "db.internal", "externalAdminPassword": "s3cret",
        "bindAddress": "0.0.0.0", "hostPort": "0",
    })
    assert isinstance(cfg.server, ExternalServer)


@pytest.mark.parametrize("value", ["strict", "REQUIRE", "ssl", "true"])
def test_bad_external_ssl_mode(value: str) -> None:
    problem = only_problem(
        {"mode": "external", "externalHost": "db.internal", "externalAdminPassword": "s3cret",
         "externalSslMode": value},
        "externalSslMode",
    )
    assert "is not a libpq sslmode" in problem
    assert "'verify-full'" in problem  # lists the valid ones


@pytest.mark.parametrize("value", ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"])
def test_external_ssl_modes_are_accepted(value: str) -> None:
    cfg = load_dict({"mode": "external", "externalHost": "db", "externalAdminPassword": "x",
                     "externalSslMode": value})
    assert isinstance(cfg.server, ExternalServer)
    assert cfg.server.sslmode == value


# ---------------------------------------------------------------------------------------------- acceptChecksums


@pytest.mark.parametrize("value", ["003", ["3"], [3], ["003", "abc"], {"003": True}, [["003"]], "[\"003\"]"])
def test_accept_checksums_must_be_a_list_of_versions(value: object) -> None:
    problem = only_problem({"acceptChecksums": value}, "acceptChecksums")
    assert "must be a list of migration versions" in problem
    assert 'e.g. ["003"]' in problem


@pytest.mark.parametrize("value", [None, [], ["001"], ["003", "007", "1000"]])
def test_accept_checksums_accepted(value: list[str] | None) -> None:
    assert load_dict({"acceptChecksums": value}).migrations.accept_checksums == frozenset(value or [])


# ---------------------------------------------------------------------------------------------- other ranges


@pytest.mark.parametrize("value", [0, 1_000_001, "many"])
def test_bad_cleanup_batch_size(value: object) -> None:
    assert "use 1 to 1000000 rows per batch" in only_problem({"cleanupBatchSize": value}, "cleanupBatchSize")


# ---------------------------------------------------------------------------------------------- all at once


def test_several_problems_are_reported_together_in_one_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_dict({
            "hostPort": 0,
            "databaseName": "Bad-Name",
            "rolePrefix": "CI",
            "passwordLength": 5,
            "cleanupSchedule": "every day",
            "bindAddress": "0.0.0.0",
            "acceptChecksums": "003",
            "cleanupBatchSize": 0,
        })
    error = info.value
    keys = [p.split(": ", 1)[0].removeprefix(f"{NAMESPACE}:") for p in error.problems]
    assert sorted(keys) == sorted([
        "hostPort", "databaseName", "rolePrefix", "passwordLength", "cleanupSchedule", "bindAddress",
        "acceptChecksums", "cleanupBatchSize",
    ])
    message = str(error)
    assert message.startswith("Invalid stack configuration (nothing was changed):\n")
    for problem in error.problems:
        assert f"  - {problem}" in message


def test_external_mode_problems_are_reported_with_the_others() -> None:
    problems = problems_of({"mode": "external", "externalSslMode": "strict", "databaseName": "X"})
    keys = sorted(p.split(": ", 1)[0] for p in problems)
    assert keys == sorted(f"{NAMESPACE}:{k}" for k in
                          ("externalHost", "externalAdminPassword", "externalSslMode", "databaseName"))


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_problems_use_the_namespace_given() -> None:
    with pytest.raises(ConfigError) as info:
        load(_DictSource({"hostPort": 0}), "other-project")
    assert info.value.problems[0].startswith("other-project:hostPort: ")


# ---------------------------------------------------------------------------------------------- DictSource


def test_dict_source_renders_values_as_pulumi_config_does() -> None:
    source = _DictSource({"a": True, "b": False, "c": 5, "d": None, "e": ["003"]})
    assert (source.get("a"), source.get("b"), source.get("c"), source.get("d")) == ("true", "false", "5", None)
    assert source.get("missing") is None
    assert source.get_object("e") == ["003"]


@pytest.mark.unit
@pytest.mark.parametrize("schedule", ["0 0 L * *", "0 0 * * 5#3", "5 4 * * ?", "0 0 1W * *"])
def test_cron_syntax_pg_cron_does_not_accept_is_rejected(schedule: str) -> None:
    problem = validate_cron_schedule(schedule)
    assert problem is not None and "pg_cron 1.4 does not accept" in problem


# ---------------------------------------------------------------------------------------------- rehearsal


def test_rehearsal_defaults_on_with_the_default_scratch_and_the_stack_image() -> None:
    assert load_dict({}).rehearsal == RehearsalSettings(
        enabled=True, read_timeout_ms=10000,
        scratch=ScratchSettings(url_key=None, image="customer-insights/postgres-cron:15"))
    custom = load_dict({"image": "registry.local/pg:15", "rehearseMigrations": "false",
                        "rehearsalReadTimeout": "2500"}).rehearsal
    assert (custom.enabled, custom.read_timeout_ms, custom.scratch.image) == (False, 2500, "registry.local/pg:15")


def test_external_mode_rehearses_on_a_local_container_of_image_unless_a_scratch_url_is_given() -> None:
    external = {"mode": "external", "externalHost": "db.internal", "externalAdminPassword": "s3cret"}
    assert load_dict({**external, "image": "registry.local/pg:16"}).rehearsal.scratch.image == "registry.local/pg:16"
    url = "postgresql://postgres:hunter2-scratch@scratch.internal:5433/postgres"
    cfg = load_dict({**external, "rehearsalScratchUrl": url})
    assert cfg.rehearsal.scratch.url_key == "rehearsalScratchUrl"
    assert "hunter2-scratch" not in repr(cfg)  # read as a secret by the program, never kept here


@pytest.mark.parametrize("value", ["scratch.internal:5432", "host=scratch user=postgres", "postgresql:///postgres",
                                   "postgresql://postgres:pw-secret@scratch:notaport/postgres"])
@pytest.mark.parametrize("key", ["rehearsalScratchUrl", "adoptScratchUrl"])
def test_bad_scratch_url_names_the_key_and_the_fix_never_the_value(value: str, key: str) -> None:
    adopting = {"mode": "external", "externalHost": "db.internal", "externalAdminPassword": "s3cret",
                "adoptFrom": "knex"} if key == "adoptScratchUrl" else {}
    problem = only_problem({**adopting, key: value}, key)
    assert f"pulumi config set --secret {key} postgresql://" in problem
    assert f"pulumi config rm {key}" in problem
    assert "pw-secret" not in problem and "scratch.internal" not in problem


@pytest.mark.parametrize("value", ["0", "99", "600001", "10s"])
def test_bad_rehearsal_read_timeout(value: str) -> None:
    assert "in milliseconds: 100 to 600000" in only_problem({"rehearsalReadTimeout": value}, "rehearsalReadTimeout")


def test_bad_rehearse_migrations() -> None:
    assert "set it to true or false" in only_problem({"rehearseMigrations": "maybe"}, "rehearseMigrations")
EXTERNAL = {"mode": "external", "externalHost": "db.internal", "externalAdminPassword": "s3cret"}


def test_adoption_settings() -> None:
    assert load_dict(EXTERNAL).adoption is None
    cfg = load_dict({**EXTERNAL, "adoptFrom": "knex", "adoptAccept": ["index customers_email_idx"],
                     "adoptScratchUrl": "postgresql://scratch"})
    assert cfg.adoption is not None and cfg.adoption.tool == "knex"
    assert cfg.adoption.accept == frozenset({"index customers_email_idx"})
    assert cfg.adoption.scratch == ScratchSettings(url_key="adoptScratchUrl",
                                                   image="customer-insights/postgres-cron:15")


@pytest.mark.parametrize(("values", "key", "fragment"), [
    ({"adoptFrom": "liquibase"}, "adoptFrom", "use one of knex, flyway, dbmate, golang-migrate"),
    ({"adoptFrom": "knex", "mode": "container"}, "adoptFrom", "set mode to external"),
    ({"adoptAccept": ["index x"]}, "adoptAccept", "set only while adopting"),
    ({"adoptFrom": "knex", "adoptAccept": "index x"}, "adoptAccept", "must be a list of difference ids"),
])
def test_adoption_errors_name_the_key_and_the_fix(values: dict[str, Any], key: str, fragment: str) -> None:
    assert fragment in only_problem({**EXTERNAL, **values}, key)


# ---------------------------------------------------------------------------------------------- server-owned names


@pytest.mark.parametrize("value", ["postgres", "template0", "template1"])
def test_a_database_the_server_needs_is_refused(value: str) -> None:
    problem = only_problem({"databaseName": value}, "databaseName")
    assert f"{value!r} is a database the server needs" in problem
    assert "drop it on destroy" in problem and "pulumi config set databaseName customer_insights" in problem


def test_the_external_admin_database_is_refused_as_database_name() -> None:
    values = {"mode": "external", "externalHost": "db.internal", "externalAdminPassword": "s3cret",
              "externalAdminDatabase": "maintenance", "databaseName": "maintenance"}
    problem = only_problem(values, "databaseName")
    assert "'maintenance' is the admin database Pulumi connects to" in problem
    assert "pulumi config set databaseName" in problem


@pytest.mark.parametrize("prefix", ["pg", "pg_team"])
def test_a_role_prefix_making_pg_names_is_refused(prefix: str) -> None:
    problem = only_problem({"rolePrefix": prefix}, "rolePrefix")
    assert f"{prefix}_owner" in problem and f"{prefix}_token_cleanup" in problem
    assert "PostgreSQL reserves for its own roles" in problem and "pulumi config set rolePrefix ci" in problem


def test_pg_alone_in_the_middle_of_a_prefix_is_fine() -> None:
    assert load_dict({"rolePrefix": "pgx"}).roles.owner == "pgx_owner"


def test_a_role_named_like_the_external_admin_user_is_refused() -> None:
    values = {"mode": "external", "externalHost": "db.internal", "externalAdminPassword": "s3cret",
              "externalAdminUser": "team_owner", "rolePrefix": "team"}
    problem = only_problem(values, "rolePrefix")
    assert "'team_owner' is externalAdminUser" in problem and "pulumi config set rolePrefix" in problem


def test_a_role_named_like_the_container_superuser_is_refused() -> None:
    # The container's superuser is always `postgres`, which no prefix yields: check the rule itself.
    from infra import config

    r = config._Reader(_DictSource({}), NAMESPACE)
    roles = RoleNames(owner="postgres", app="x_app", readonly="x_readonly", cleanup="x_token_cleanup")
    server = ContainerServer(image="i", host_port=1, bind_address="127.0.0.1", superuser="postgres")
    config._server_owned_names(r, "customer_insights", roles, server)
    assert len(r.problems) == 1 and r.problems[0].startswith(f"{NAMESPACE}:rolePrefix: ")
    assert "'postgres' is the container's superuser" in r.problems[0]
