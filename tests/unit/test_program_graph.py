"""The real `__main__.py` under Pulumi's mocks (`devsupport.program_mocks`): the resources it declares,
how they are wired, its exports."""

from __future__ import annotations

import base64
import glob
import itertools
from pathlib import Path
from typing import Any

import dill
import pytest
from pulumi.runtime import rpc

from devsupport.program_mocks import (
    CONTAINER,
    CRON_JOB,
    CRON_JOB_ID,
    DATA_PROTECTION_COMPONENT,
    DATABASE,
    DB_COMPONENT,
    DEFAULT_PRIVILEGES,
    EXTENSION,
    GRANT,
    IMAGE_ID,
    JOB_COMPONENT,
    MIGRATION,
    MIGRATIONS_COMPONENT,
    NETWORK,
    PG_PROVIDER,
    PROJECT,
    RANDOM_PASSWORD,
    REMOTE_IMAGE,
    REPO,
    ROLE,
    SERVER_COMPONENT,
    SERVER_READY,
    TABLE_PRIVILEGES_COMPONENT,
    VOLUME,
    FakePreflight,
    ProgramHarness,
    ProgramRun,
    Registration,
    contains_secret,
    password_of,
    plain_strings,
    reveal,
)
from infra.config import ConfigError, ExternalServer
from infra.dynamic.cron_job import CronJobProvider
from infra.dynamic.migration import MigrationProvider
from infra.migrate import load_migrations
from infra.preflight import PreflightError

pytestmark = [
    pytest.mark.unit,
    # pulumi_postgresql warns about its deprecated DefaultPrivileg alias when the package is loaded
    pytest.mark.filterwarnings("ignore:postgresql.DefaultPrivileg has been deprecated:DeprecationWarning"),
]

PASSWORD_FILE = "/etc/postgresql-secrets/superuser-password"
DATA_DIR = "/var/lib/postgresql/data"


def migration_files() -> list[str]:
    """The up scripts of sql/, by version, straight from the directory (not through infra.migrate)."""
    names = [Path(p).name for p in glob.glob(str(REPO / "sql" / "*.sql"))]
    ups = [n for n in names if not n.endswith(".down.sql")]
    return sorted(ups, key=lambda n: int(n.split("_", 1)[0]))


# ---------------------------------------------------------------------------------------------- container mode

CONTAINER_CONFIG = {
    "mode": "container",
    "databaseName": "insights_test",
    "rolePrefix": "cit",
    "hostPort": "55999",
    "passwordLength": "24",
    "image": "registry.local/customer-insights/postgres-cron:15-test",
    "cleanupSchedule": "7 3 * * *",
    "cleanupBatchSize": "250",
    "acceptChecksums": '["003"]',
    "keepDataOnDestroy": "true",
}
ROLES = {"owner": "cit_owner", "app": "cit_app", "readonly": "cit_readonly", "cleanup": "cit_token_cleanup"}
SUPERUSER_PASSWORD = password_of("superuser-password")


@pytest.fixture(scope="module")
def run() -> ProgramRun:
    return ProgramHarness().run(CONTAINER_CONFIG)


def test_every_registration_reaches_the_mocks() -> None:
    harness = ProgramHarness()
    result = harness.run(CONTAINER_CONFIG)
    assert sorted((a.typ, a.name) for a in harness.mocks.created) == sorted((r.type, r.name) for r in result.resources)
    assert harness.mocks.calls == []  # the program invokes no provider function
    assert len({r.urn for r in result.resources}) == len(result.resources)


def test_component_type_tokens_are_the_ones_stacks_recorded(run: ProgramRun) -> None:
    """A component's type token is part of its URN and of every child's: changing one re-creates them."""
    assert sorted(r.urn for r in run.resources if not r.custom) == sorted(
        f"urn:pulumi:unit::customer-insights-db::pulumi:pulumi:Stack$customer-insights:db:{token}" for token in (
            "PostgresServer::postgres", "DatabaseAndRoles::app-db", "Migrations::schema",
            "TokenCleanupJob::token-cleanup", "TablePrivileges::table-privileges", "DataProtection::protectData"))


def test_container_mode_inventory(run: ProgramRun) -> None:
    counts: dict[str, int] = {}
    for r in run.resources:
        counts[r.type] = counts.get(r.type, 0) + 1
    assert counts == {
        SERVER_COMPONENT: 1, DB_COMPONENT: 1, MIGRATIONS_COMPONENT: 1, JOB_COMPONENT: 1,
        TABLE_PRIVILEGES_COMPONENT: 1, DATA_PROTECTION_COMPONENT: 1,
        VOLUME: 1, REMOTE_IMAGE: 1, CONTAINER: 1,  # no network: clients use the published port
        RANDOM_PASSWORD: 5,  # the superuser's and one per role
        PG_PROVIDER: 1, ROLE: 4, DATABASE: 1,
        # revoke from PUBLIC, CONNECT + USAGE per non-owner role, the job's four, and the exceptions to the
        # default privileges: 2 secret-column tables x (revoke + columns), the migration history
        GRANT: 1 + 3 * 2 + 4 + 2 * 2 + 1,
        DEFAULT_PRIVILEGES: 4, EXTENSION: 1,
        MIGRATION: len(migration_files()), CRON_JOB: 1,
        "pulumi-python:dynamic/db:DataVolumeCheck": 1,  # stops up/preview once the volume is gone (issue 10)
        SERVER_READY: 1,  # done once the server accepts a login
    }


def test_docker_network_volume_and_image(run: ProgramRun) -> None:
    server = run.one(SERVER_COMPONENT, "postgres")
    volume, image = run.one(VOLUME, "postgres-data"), run.one(REMOTE_IMAGE, "postgres-image")
    for resource in (volume, image):
        assert run.parent_of(resource) is server
    assert not run.of_type(NETWORK)
    assert volume["name"] == "postgres-unit-data"
    assert image["name"] == CONTAINER_CONFIG["image"]
    assert image["keepLocally"] is True


def test_container_publishes_the_port_on_loopback_only(run: ProgramRun) -> None:
    container = run.one(CONTAINER, "postgres")
    assert run.parent_of(container).type == SERVER_COMPONENT
    assert container["ports"] == [{"internal": 5432, "external": 55999, "ip": "127.0.0.1"}]
    assert container["image"] == IMAGE_ID  # the RemoteImage's id
    assert container["volumes"] == [{"volumeName": "postgres-unit-data", "containerPath": DATA_DIR}]
    assert "networksAdvanced" not in container.inputs
    assert f"cron.database_name={CONTAINER_CONFIG['databaseName']}" in container["command"]
    assert "shared_preload_libraries=pg_cron" in container["command"]


def test_connecting_resources_wait_for_a_real_login_not_the_healthcheck(run: ProgramRun) -> None:
    container = run.one(CONTAINER, "postgres")
    assert not container.get("wait")  # pulumi-docker's wait polls health once a second
    tests = container["healthcheck"]["tests"]  # kept, for `docker ps`
    assert tests[:2] == ["CMD", "pg_isready"]
    ready = run.one(SERVER_READY, "postgres-ready")
    assert container.urn in ready.dependencies
    assert (ready["host"], int(ready["port"]), ready["user"], ready["dbname"]) == ("127.0.0.1", 55999, "postgres",
                                                                                   "postgres")
    assert ready["password"] == SUPERUSER_PASSWORD and ready.is_secret("password")
    provider = run.one(PG_PROVIDER, "app-db-admin")
    assert ready.urn in provider.dependencies  # the admin connection's port comes from it
    assert {m.urn for m in run.migrations()} <= {r.urn for r in run.resources} and all(
        ready.urn in run.upstream_of(m) for m in run.migrations())


def test_superuser_password_is_uploaded_as_a_file_never_in_the_environment(run: ProgramRun) -> None:
    container = run.one(CONTAINER, "postgres")
    envs = container["envs"]
    assert f"POSTGRES_PASSWORD_FILE={PASSWORD_FILE}" in envs
    assert not [e for e in envs if e.startswith("POSTGRES_PASSWORD=")]
    assert all(SUPERUSER_PASSWORD not in e for e in envs)
    assert SUPERUSER_PASSWORD not in " ".join(container["command"])
    uploads = container.inputs["uploads"]
    assert reveal(uploads) == [{"file": PASSWORD_FILE, "content": SUPERUSER_PASSWORD}]
    assert contains_secret(uploads)  # the generated password stays a secret input...
    assert "uploads" in container.additional_secret_outputs  # ...and a secret output


def test_the_container_password_is_the_generated_one(run: ProgramRun) -> None:
    password = run.one(RANDOM_PASSWORD, "superuser-password")
    assert password["length"] == 24
    assert password["special"] is False
    container = run.one(CONTAINER, "postgres")
    assert password.urn in container.property_dependencies["uploads"]


def test_admin_provider_connects_to_the_container_as_superuser(run: ProgramRun) -> None:
    provider = run.one(PG_PROVIDER, "app-db-admin")
    assert (provider["host"], int(provider["port"]), provider["username"], provider["database"]) == (
        "127.0.0.1", 55999, "postgres", "postgres"
    )
    assert provider["password"] == SUPERUSER_PASSWORD
    assert provider.is_secret("password")
    assert provider["sslmode"] == "disable"
    assert provider["superuser"] == "true"  # provider config travels as strings
    container = run.one(CONTAINER, "postgres")
    assert container.urn in run.upstream_of(provider)  # waits for the server (through ServerReady)


def test_roles_are_least_privileged(run: ProgramRun) -> None:
    roles = {r.name: r for r in run.of_type(ROLE)}
    assert {purpose: roles[f"app-db-{purpose}"]["name"] for purpose in ROLES} == ROLES
    provider = run.one(PG_PROVIDER, "app-db-admin")
    for purpose, role in ((p, roles[f"app-db-{p}"]) for p in ROLES):
        assert role["superuser"] is False, purpose
        assert role["createRole"] is False, purpose
        assert role["createDatabase"] is False, purpose
        assert role.get("replication", False) is False, purpose
        assert role.get("bypassRowLevelSecurity", False) is False, purpose
        assert role["login"] is True, purpose
        assert role["password"] == password_of(f"app-db-{purpose}-password"), purpose
        assert role.is_secret("password"), purpose
        assert run.provider_of(role) is provider, purpose


def test_database_is_owned_by_the_owner_role(run: ProgramRun) -> None:
    database = run.one(DATABASE, "app-db")
    assert database["name"] == "insights_test"
    assert database["owner"] == ROLES["owner"]
    assert run.one(ROLE, "app-db-owner").urn in database.dependencies
    assert run.provider_of(database).name == "app-db-admin"


def database_grants(run: ProgramRun) -> dict[str, list[str]]:
    return {
        g["role"]: g["privileges"]
        for g in run.of_type(GRANT)
        if g["objectType"] == "database"
    }


def test_connect_is_revoked_from_public_and_granted_per_role(run: ProgramRun) -> None:
    assert database_grants(run) == {
        "public": [],
        ROLES["app"]: ["CONNECT"],
        ROLES["readonly"]: ["CONNECT"],
        ROLES["cleanup"]: ["CONNECT"],
    }
    database = run.one(DATABASE, "app-db")
    for grant in run.of_type(GRANT):
        assert grant["database"] == "insights_test"
        assert database.urn in grant.dependencies
    revoke = run.one(GRANT, "app-db-revoke-public")
    assert revoke["role"] == "public"
    assert revoke["privileges"] == []


def test_default_privileges_for_tables_the_owner_creates(run: ProgramRun) -> None:
    found = {
        (d["role"], d["objectType"]): (d["owner"], d["schema"], d["database"], sorted(d["privileges"]))
        for d in run.of_type(DEFAULT_PRIVILEGES)
    }
    owner = ROLES["owner"]
    assert found == {
        (ROLES["app"], "table"): (owner, "public", "insights_test", sorted(["SELECT", "INSERT", "UPDATE", "DELETE"])),
        (ROLES["app"], "sequence"): (owner, "public", "insights_test", ["SELECT", "USAGE"]),
        (ROLES["readonly"], "table"): (owner, "public", "insights_test", ["SELECT"]),
        (ROLES["readonly"], "sequence"): (owner, "public", "insights_test", ["SELECT"]),
    }


def test_one_migration_per_up_file_in_version_order(run: ProgramRun) -> None:
    files = migration_files()
    assert files, "sql/ has no migration"
    migrations = run.migrations()
    assert [m.name for m in migrations] == [f.removesuffix(".sql") for f in files]
    assert [m["filename"] for m in migrations] == files
    component = run.one(MIGRATIONS_COMPONENT, "schema")
    for migration, loaded in zip(migrations, load_migrations(REPO / "sql"), strict=True):
        assert run.parent_of(migration) is component
        assert (migration["version"], migration["name"], migration["checksum"]) == (
            loaded.version, loaded.name, loaded.checksum
        )
        assert migration["up_sql"] == loaded.up_sql
        assert migration.get("down_sql") == loaded.down_sql
        assert migration["transactional"] is loaded.transactional
    assert run.output("migrations") == [m["version"] for m in migrations]


def test_each_migration_depends_on_the_previous_one(run: ProgramRun) -> None:
    migrations = run.migrations()
    migration_urns = {m.urn for m in migrations}
    assert not migration_urns & set(migrations[0].dependencies)
    for previous, migration in itertools.pairwise(migrations):
        assert migration_urns & set(migration.dependencies) == {previous.urn}, migration.name


def test_first_migration_depends_on_the_database_and_its_grants(run: ProgramRun) -> None:
    # after=[db]: the SDK expands the component to every resource of DatabaseAndRoles, recorded on
    # the first Migration itself, so destroy reverts the schema before it revokes grants or drops roles.
    first = run.migrations()[0]
    db_resources = run.children_of(run.one(DB_COMPONENT, "app-db"))
    assert {r.urn for r in db_resources if r.custom} <= set(first.dependencies)
    assert any(r.type == DEFAULT_PRIVILEGES for r in db_resources)


def test_migrations_connect_as_the_owner_never_the_superuser(run: ProgramRun) -> None:
    for migration in run.migrations():
        assert migration["user"] == ROLES["owner"]
        assert migration["password"] == password_of("app-db-owner-password")
        assert migration["password"] != SUPERUSER_PASSWORD
        assert migration.is_secret("password")
        assert "password" in migration.additional_secret_outputs
        assert (migration["host"], int(migration["port"]), migration["dbname"], migration["sslmode"]) == (
            "127.0.0.1", 55999, "insights_test", "disable"
        )


def test_migration_switches_come_from_the_config(run: ProgramRun) -> None:
    accepted = {m["version"] for m in run.migrations() if m["accept_checksum"]}
    assert accepted == {"003"}
    assert all(m["keep_on_destroy"] is True for m in run.migrations())
    assert all(m["allow_out_of_order"] is False for m in run.migrations())  # strict unless allowOutOfOrder
    # The library's refusals are worded in this program's own config keys.
    for m in run.migrations():
        assert f'add "{m["version"]}" to the stack config `{PROJECT}:acceptChecksums`' in \
            m["fixes"]["accept_checksum"].replace("{version}", m["version"])
        assert f"`{PROJECT}:allowOutOfOrder` to true" in m["fixes"]["allow_out_of_order"]


def test_allow_out_of_order_comes_from_the_config() -> None:
    lenient = ProgramHarness().run({**CONTAINER_CONFIG, "allowOutOfOrder": "true"})
    assert lenient.migrations() and all(m["allow_out_of_order"] is True for m in lenient.migrations())


@pytest.mark.parametrize("kind", ["migration", "cron"])
def test_dynamic_resources_carry_their_pickled_provider(run: ProgramRun, kind: str) -> None:
    # Under mocks the dynamic resources serialize their provider exactly as in `pulumi up`: dill,
    # base64, as a secret input `__provider`.
    resource = run.migrations()[0] if kind == "migration" else run.cron_job()
    expected = MigrationProvider if kind == "migration" else CronJobProvider
    assert resource.is_secret("__provider")
    provider = dill.loads(base64.b64decode(resource["__provider"]))
    assert type(provider) is expected
    assert vars(provider) == {}


def test_cron_job_runs_the_procedure_as_the_cleanup_role(run: ProgramRun) -> None:
    job = run.cron_job()
    assert run.parent_of(job).type == JOB_COMPONENT
    assert job["job_name"] == "insights_test-delete-expired-refresh-tokens"
    assert job["schedule"] == "7 3 * * *"
    assert job["command"] == "CALL delete_expired_refresh_tokens(batch_size => 250)"
    assert job["run_as"] == ROLES["cleanup"]
    assert job["database"] == "insights_test"
    assert job["active"] is True
    assert run.one(ROLE, "app-db-cleanup").urn in job.dependencies


def test_cron_job_is_scheduled_through_the_admin_connection_to_the_cron_database(run: ProgramRun) -> None:
    job = run.cron_job()
    assert (job["host"], int(job["port"]), job["dbname"], job["user"]) == (
        "127.0.0.1", 55999, "insights_test", "postgres"
    )
    assert job["password"] == SUPERUSER_PASSWORD
    assert job.is_secret("password")


def test_cron_job_waits_for_extension_grants_and_every_migration(run: ProgramRun) -> None:
    job = run.cron_job()
    component = run.parent_of(job)
    siblings = {r.urn for r in run.children_of(component) if r.urn != job.urn}
    assert len(siblings) == 5  # the extension and four grants
    assert siblings <= set(job.dependencies)
    assert {m.urn for m in run.migrations()} <= run.upstream_of(job)


def test_pg_cron_extension(run: ProgramRun) -> None:
    extension = run.one(EXTENSION, "token-cleanup-pg-cron")
    assert extension["name"] == "pg_cron"
    assert extension["database"] == "insights_test"  # the server's cron.database_name
    assert run.provider_of(extension).name == "app-db-admin"
    assert {m.urn for m in run.migrations()} <= run.upstream_of(extension)


def grant_summary(grant: Registration) -> tuple[Any, ...]:
    return (
        grant["objectType"],
        grant.get("schema"),
        tuple(grant.get("objects") or ()),
        tuple(grant.get("columns") or ()),
        tuple(sorted(grant["privileges"])),
    )


def test_cleanup_role_grants_are_exactly_what_the_job_needs(run: ProgramRun) -> None:
    job_component = run.one(JOB_COMPONENT, "token-cleanup")
    job_grants = [g for g in run.of_type(GRANT) if g.parent == job_component.urn]
    assert all(g["role"] == ROLES["cleanup"] and g["database"] == "insights_test" for g in job_grants)
    assert sorted(grant_summary(g) for g in job_grants) == sorted([
        ("table", "public", ("refresh_tokens",), (), ("DELETE",)),
        ("column", "public", ("refresh_tokens",), ("id", "expires_at"), ("SELECT",)),
        ("table", "public", ("refresh_token_cleanup_runs",), (), ("INSERT",)),
        ("procedure", "public", ("delete_expired_refresh_tokens",), (), ("EXECUTE",)),
    ])
    for grant in job_grants:
        assert run.provider_of(grant).name == "app-db-admin"
        assert {m.urn for m in run.migrations()} <= run.upstream_of(grant)  # the objects exist by then

    # everything else the cleanup role gets: CONNECT to the database and USAGE on the schema, no
    # default privileges
    other = sorted(grant_summary(g) for g in run.of_type(GRANT)
                   if g["role"] == ROLES["cleanup"] and g.parent != job_component.urn)
    assert other == [("database", None, (), (), ("CONNECT",)), ("schema", "public", (), (), ("USAGE",))]
    assert not [d for d in run.of_type(DEFAULT_PRIVILEGES) if d["role"] == ROLES["cleanup"]]


# ---------------------------------------------------------------------------------------------- grant race

PRIVILEGE_TYPES = (GRANT, DEFAULT_PRIVILEGES)


def acl_rows(resource: Registration) -> set[tuple[str, ...]]:
    """The catalog rows holding the access list that a privilege resource rewrites."""
    database = resource["database"]
    if resource.type == DEFAULT_PRIVILEGES:
        return {("default-acl", database, resource["owner"], resource.get("schema") or "", resource["objectType"])}
    kind = resource["objectType"]
    if kind == "database":
        return {("database", database)}
    if kind == "schema":
        return {("schema", database, resource["schema"])}
    # tables, columns (the table's attribute rows), sequences, functions, procedures; none listed: all
    return {("object", database, resource["schema"], name) for name in resource.get("objects") or ["*"]}


def rows_overlap(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> bool:
    return any(
        x == y or (x[0] == y[0] == "object" and x[:3] == y[:3] and "*" in (x[3], y[3]))
        for x in a for y in b
    )


def concurrent_privilege_pairs(run: ProgramRun) -> list[tuple[str, str]]:
    """Pairs of privilege resources on one catalog row that the engine could run at the same time."""
    privileges = [r for r in run.resources if r.type in PRIVILEGE_TYPES]
    upstream = {r.urn: run.upstream_of(r) for r in privileges}
    return [
        (a.name, b.name)
        for a, b in itertools.combinations(privileges, 2)
        if rows_overlap(acl_rows(a), acl_rows(b)) and a.urn not in upstream[b.urn] and b.urn not in upstream[a.urn]
    ]


def test_no_two_privilege_resources_on_one_object_can_run_at_once(run: ProgramRun) -> None:
    # pulumi/pulumi-postgresql#831: "tuple concurrently updated" when two of them change one ACL at once
    assert len(run.of_type(GRANT)) + len(run.of_type(DEFAULT_PRIVILEGES)) >= 15
    assert concurrent_privilege_pairs(run) == []


def test_privilege_resources_wait_only_for_privilege_resources_on_their_own_rows(run: ProgramRun) -> None:
    # The other half of the rule: no privilege resource waits for another one on a different row, so
    # the engine runs those in parallel (the database's, the schema's and the default ACLs' rows).
    by_urn = {r.urn: r for r in run.resources if r.type in PRIVILEGE_TYPES}
    needless = [(r.name, by_urn[d].name) for r in by_urn.values() for d in r.dependencies
                if d in by_urn and not rows_overlap(acl_rows(r), acl_rows(by_urn[d]))]
    assert needless == []
    unordered = {frozenset(p) for p in itertools.combinations(("app-db-app-connect", "app-db-app-schema-usage",
                                                               "app-db-app-default-table",
                                                               "app-db-app-default-sequence"), 2)}
    ordered = {frozenset((a.name, b.name)) for a, b in itertools.combinations(by_urn.values(), 2)
               if a.urn in run.upstream_of(b) or b.urn in run.upstream_of(a)}
    assert not unordered & ordered


def test_the_concurrency_check_finds_unordered_grants_on_one_object(run: ProgramRun) -> None:
    # The same program with the ordering taken away: the check above must report the races.
    unordered = ProgramRun(
        [Registration(**{**r.__dict__, "dependencies": []}) if r.type in PRIVILEGE_TYPES else r
         for r in run.resources],
        run.outputs, run.export_is_secret,
    )
    pairs = concurrent_privilege_pairs(unordered)
    assert ("app-db-revoke-public", "app-db-app-connect") in pairs
    assert ("app-db-app-schema-usage", "app-db-readonly-schema-usage") in pairs
    assert ("token-cleanup-delete-tokens", "token-cleanup-read-token-expiry") in pairs
    # different objects are no race
    assert ("app-db-app-connect", "app-db-app-schema-usage") not in pairs


def test_exports(run: ProgramRun) -> None:
    assert set(run.outputs) == {
        "mode", "host", "port", "database", "roles", "connection_urls", "env", "migrations", "cleanup_job",
    }
    assert run.output("mode") == "container"
    assert run.output("host") == "127.0.0.1"
    assert int(run.output("port")) == 55999
    assert run.output("database") == "insights_test"
    assert run.output("roles") == ROLES
    assert run.output("cleanup_job") == {
        "name": "insights_test-delete-expired-refresh-tokens", "schedule": "7 3 * * *", "job_id": CRON_JOB_ID,
        "history_database": "insights_test",
    }


@pytest.mark.parametrize("name", ["connection_urls", "env"])
def test_credential_exports_are_secret(run: ProgramRun, name: str) -> None:
    # as stored by the engine: the whole value is wrapped as a secret
    assert rpc.is_rpc_secret(run.outputs[name]), run.outputs[name]
    # as exported by the program
    assert run.export_is_secret[name] is True


@pytest.mark.parametrize("name", ["mode", "host", "port", "database", "roles", "migrations"])
def test_other_exports_are_not_secret(run: ProgramRun, name: str) -> None:
    # shows the check above can tell the difference
    assert not contains_secret(run.outputs[name])
    assert run.export_is_secret[name] is False


def test_env_export(run: ProgramRun) -> None:
    app_password = password_of("app-db-app-password")
    assert run.output("env") == {
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": "55999",
        "POSTGRES_DB": "insights_test",
        "POSTGRES_USER": ROLES["app"],
        "POSTGRES_PASSWORD": app_password,
        "DATABASE_URL": f"postgresql://{ROLES['app']}:{app_password}@127.0.0.1:55999/insights_test",
    }


def test_connection_urls_export(run: ProgramRun) -> None:
    assert run.output("connection_urls") == {
        purpose: f"postgresql://{role}:{password_of(f'app-db-{purpose}-password')}@127.0.0.1:55999/insights_test"
        for purpose, role in ROLES.items()
    }


def test_no_password_appears_outside_a_secret(run: ProgramRun) -> None:
    passwords = {SUPERUSER_PASSWORD, *(password_of(f"app-db-{p}-password") for p in ROLES)}
    leaks = [
        (r.type, r.name, text)
        for r in run.resources
        for text in plain_strings(r.inputs)
        if any(p in text for p in passwords)
    ]
    leaks += [("stack output", name, text) for name, value in run.outputs.items()
              for text in plain_strings(value) if any(p in text for p in passwords)]
    assert not leaks


def test_default_config() -> None:
    result = ProgramHarness().run({})
    assert int(result.output("port")) == 55432
    assert result.output("database") == "customer_insights"
    assert result.output("roles") == {
        "owner": "ci_owner", "app": "ci_app", "readonly": "ci_readonly", "cleanup": "ci_token_cleanup",
    }
    assert result.one(CONTAINER, "postgres")["ports"][0]["ip"] == "127.0.0.1"
    job = result.cron_job()
    assert (job["schedule"], job["command"]) == (
        "*/15 * * * *", "CALL delete_expired_refresh_tokens(batch_size => 5000)"
    )
    assert not [m for m in result.migrations() if m["accept_checksum"] or m["keep_on_destroy"]]


def test_disabled_cleanup_job_is_declared_inactive() -> None:
    result = ProgramHarness().run({"cleanupEnabled": "false"})
    assert result.cron_job()["active"] is False


# ---------------------------------------------------------------------------------------------- external mode

EXTERNAL_CONFIG = {
    "mode": "external",
    "externalHost": "db.example.internal",
    "externalPort": "6543",
    "externalAdminUser": "admin",
    "externalAdminPassword": "ext-admin-secret-0123456789",
    "externalAdminDatabase": "defaultdb",
    "externalSslMode": "verify-full",
}


def test_external_mode_checks_the_configured_server_first(preflight: FakePreflight) -> None:
    ProgramHarness().run(EXTERNAL_CONFIG, secret_keys=["externalAdminPassword"])
    assert preflight.calls == [{
        "server": ExternalServer(host="db.example.internal", port=6543, admin_user="admin",
                                 admin_password_key="externalAdminPassword", sslmode="verify-full",
                                 admin_database="defaultdb", superuser=False),
        "password": "ext-admin-secret-0123456789",
    }]


def test_external_mode_declares_no_docker_resource(preflight: FakePreflight) -> None:
    result = ProgramHarness().run(EXTERNAL_CONFIG, secret_keys=["externalAdminPassword"])
    assert not [r for r in result.resources if r.type.startswith("docker:") or r.type == SERVER_COMPONENT]
    # no superuser password either: the role passwords only
    assert {r.name for r in result.of_type(RANDOM_PASSWORD)} == {f"app-db-{p}-password" for p in ROLES}
    assert len(result.of_type(ROLE)) == 4
    assert len(result.migrations()) == len(migration_files())


def test_external_mode_connects_with_the_configured_admin(preflight: FakePreflight) -> None:
    result = ProgramHarness().run(EXTERNAL_CONFIG, secret_keys=["externalAdminPassword"])
    provider = result.one(PG_PROVIDER, "app-db-admin")
    assert (provider["host"], int(provider["port"]), provider["username"], provider["database"]) == (
        "db.example.internal", 6543, "admin", "defaultdb"
    )
    assert provider["sslmode"] == "verify-full"
    assert provider["superuser"] == "false"  # provider config travels as strings
    assert provider["password"] == "ext-admin-secret-0123456789"
    assert provider.is_secret("password")

    for migration in result.migrations():
        assert (migration["host"], int(migration["port"]), migration["sslmode"], migration["user"]) == (
            "db.example.internal", 6543, "verify-full", "ci_owner"
        )

    # pg_cron lives in the database the preflight found in cron.database_name
    assert result.one(EXTENSION, "token-cleanup-pg-cron")["database"] == "cron_db"
    job = result.cron_job()
    assert (job["dbname"], job["user"], job["database"]) == ("cron_db", "admin", "customer_insights")
    assert job.is_secret("password")

    assert result.output("mode") == "external"
    assert result.output("env")["POSTGRES_HOST"] == "db.example.internal"
    assert result.output("env")["POSTGRES_PORT"] == "6543"
    leaks = [(r.type, r.name) for r in result.resources
             if any("ext-admin-secret" in text for text in plain_strings(r.inputs))]
    assert not leaks


def test_preflight_error_propagates_and_nothing_is_declared(preflight: FakePreflight) -> None:
    preflight.result = PreflightError("pg_cron is not enabled on db.example.internal:6543")
    harness = ProgramHarness()
    with pytest.raises(PreflightError, match="pg_cron is not enabled"):
        harness.run(EXTERNAL_CONFIG, secret_keys=["externalAdminPassword"])
    assert len(preflight.calls) == 1
    assert harness.mocks.created == []
    assert harness.monitor.registrations == []


# ---------------------------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"hostPort": "0"}, "hostPort"),
        ({"databaseName": "Bad-Name"}, "databaseName"),
        ({"bindAddress": "0.0.0.0"}, "bindAddress"),
        ({"cleanupSchedule": "every day"}, "cleanupSchedule"),
        ({"mode": "external"}, "externalHost"),
        ({**EXTERNAL_CONFIG, "externalSslMode": "strict"}, "externalSslMode"),
    ],
)
def test_config_error_declares_nothing(preflight: FakePreflight, config: dict[str, str], key: str) -> None:
    harness = ProgramHarness()
    with pytest.raises(ConfigError, match=f"{PROJECT}:{key}: "):
        harness.run(config)
    assert harness.mocks.created == []
    assert harness.monitor.registrations == []
    assert preflight.calls == []  # not even the external server is contacted


def test_unknown_accept_checksums_version_fails_naming_the_key() -> None:
    # The program loads and checks the migrations once, before it declares anything.
    harness = ProgramHarness()
    with pytest.raises(ConfigError, match=rf"{PROJECT}:acceptChecksums: versions \['999'\] have no file in"):
        harness.run({"acceptChecksums": '["999"]'})
    assert harness.monitor.registrations == []


def test_a_bad_migrations_dir_fails_naming_the_key_before_anything_is_declared(tmp_path: Path) -> None:
    (tmp_path / "1_bad.sql").write_text("SELECT 1;\n")
    harness = ProgramHarness()
    with pytest.raises(ConfigError, match=rf"{PROJECT}:migrationsDir: 1_bad.sql: not a valid migration file name"
                                          r".*`python -m infra.migrations_cli new NAME` creates well-named files"):
        harness.run({"migrationsDir": str(tmp_path)})
    assert harness.monitor.registrations == []


# ------------------------------------------------------------------------------ least privilege, rotation (issue 9)


def exceptions_to_default_privileges(run: ProgramRun) -> dict[str, Registration]:
    component = run.one(TABLE_PRIVILEGES_COMPONENT, "table-privileges")
    return {g.name: g for g in run.children_of(component)}


def test_read_only_role_reads_secret_tables_column_by_column_never_the_secret_columns(run: ProgramRun) -> None:
    from infra.components.database import READONLY_COLUMNS, SECRET_COLUMNS

    grants = exceptions_to_default_privileges(run)
    for table, secrets in SECRET_COLUMNS.items():
        revoke = grants[f"table-privileges-readonly-{table}-revoke"]
        columns = grants[f"table-privileges-readonly-{table}-columns"]
        assert grant_summary(revoke) == ("table", "public", (table,), (), ())  # REVOKE ALL: the default SELECT
        assert grant_summary(columns)[:3] == ("column", "public", (table,))
        assert columns["role"] == revoke["role"] == ROLES["readonly"]
        assert columns["privileges"] == ["SELECT"]
        assert set(columns["columns"]) == set(READONLY_COLUMNS[table]) and not set(secrets) & set(columns["columns"])
        assert revoke.urn in run.upstream_of(columns)  # REVOKE ALL also drops column grants: revoke first


def test_migration_history_exception(run: ProgramRun) -> None:
    grants = exceptions_to_default_privileges(run)
    history = grants["table-privileges-app-history-revoke"]
    assert (history["role"], grant_summary(history)) == (
        ROLES["app"], ("table", "public", ("schema_migrations",), (), ()))
    assert len(grants) == 5  # (008 itself revokes EXECUTE on the cleanup procedure from PUBLIC)
    for grant in grants.values():
        assert grant["database"] == "insights_test"
        assert run.provider_of(grant).name == "app-db-admin"
        assert {m.urn for m in run.migrations()} <= run.upstream_of(grant)  # the objects exist by then


def role_passwords(run: ProgramRun) -> dict[str, Registration]:
    return {p.name: p for p in run.of_type(RANDOM_PASSWORD)}


def test_passwords_have_no_keepers_until_a_rotation_is_asked_for(run: ProgramRun) -> None:
    # Stacks created before passwordRotation existed must not see their passwords replaced.
    assert all(p.get("keepers") is None for p in role_passwords(run).values())


def test_rotating_one_role_changes_only_that_roles_password_keepers() -> None:
    rotated = ProgramHarness().run({**CONTAINER_CONFIG, "passwordRotation": '{"readonly": 1}'})
    keepers = {name: p.get("keepers") for name, p in role_passwords(rotated).items()}
    assert keepers == {
        "superuser-password": None, "app-db-owner-password": None, "app-db-app-password": None,
        "app-db-readonly-password": {"rotation": "all=0,readonly=1"}, "app-db-cleanup-password": None,
    }
    again = ProgramHarness().run({**CONTAINER_CONFIG, "passwordRotation": '{"readonly": 1, "all": 1}'})
    keepers = {name: p.get("keepers") for name, p in role_passwords(again).items()}
    assert keepers["superuser-password"] is None  # set at initdb only: not rotated this way (README)
    assert keepers["app-db-readonly-password"] == {"rotation": "all=1,readonly=1"}
    assert keepers["app-db-owner-password"] == {"rotation": "all=1,owner=0"}


@pytest.mark.parametrize(("value", "message"), [
    ('{"bob": 1}', "passwordRotation.bob: unknown role 'bob'"),
    ('{"app": -1}', "passwordRotation.app: -1 is not a whole number"),
    ('[1]', "must be an object of counters"),
])
def test_bad_password_rotation_fails_naming_the_key(value: str, message: str) -> None:
    harness = ProgramHarness()
    with pytest.raises(ConfigError, match=message):
        harness.run({**CONTAINER_CONFIG, "passwordRotation": value})
    assert harness.monitor.registrations == []


def test_external_mode_claims_the_names_before_anything_reaches_the_server(preflight: FakePreflight) -> None:
    """Issue 10: two stacks on one server; the admin provider (so every server object) waits for the claim."""
    result = ProgramHarness().run(EXTERNAL_CONFIG, secret_keys=["externalAdminPassword"])
    claim = result.one("pulumi-python:dynamic/db:StackClaim", "stack-claim")
    assert (claim["database"], claim["roles"][0], claim["stack"]) == (
        "customer_insights", "ci_owner", f"{result.one(PG_PROVIDER, 'app-db-admin').urn.split('::')[1]}/unit")
    assert claim.urn in result.one(PG_PROVIDER, "app-db-admin").dependencies
    assert claim.is_secret("password")
