"""The stack's configuration: read once, typed, and validated before any resource is declared.

Every problem is reported at once, each naming the config key and the fix, so a bad value fails
`pulumi preview` before anything changes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

import psycopg
import pulumi
from croniter import croniter
from psycopg.conninfo import conninfo_to_dict

from infra.migrate import (
    Checkpoint,
    MigrationFile,
    MigrationFileError,
    StatementLimits,
    load_checkpoint,
    load_migrations,
    split_at_checkpoint,
)
from infra.migration_identity import FILES_HINT

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
VERSION = re.compile(r"^[0-9]{3,}$")
# One field of a pg_cron (vixie cron) schedule: numbers, month/day names, *, ranges, lists, steps.
CRON_FIELD = re.compile(
    r"^(\*|[0-9]+|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|sun|mon|tue|wed|thu|fri|sat)"
    r"(-([0-9]+|[a-z]{3}))?(/[0-9]+)?(,(\*|[0-9]+|[a-z]{3})(-([0-9]+|[a-z]{3}))?(/[0-9]+)?)*$",
    re.IGNORECASE,
)
MIN_PASSWORD_LENGTH = 20
MAX_PASSWORD_LENGTH = 128
MODES = ("container", "external")
DEV_STACK = "dev"  # the one stack whose data is not protected by default (protectData)
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
DEFAULT_IMAGE = "customer-insights/postgres-cron:15"
# migrationLockTimeout: the application's queries queue behind a waiting ALTER for up to this long per
# attempt (bench/README.md, "Migrations behind a blocker").
DEFAULT_LOCK_TIMEOUT_MS = 2000
# Databases every PostgreSQL server has and needs: the program would own them and drop them on destroy.
SERVER_DATABASES = ("postgres", "template0", "template1")
# PostgreSQL reserves role names starting with pg_ (CREATE ROLE refuses them).
RESERVED_ROLE_PREFIX = "pg_"


class ConfigError(pulumi.RunError, ValueError):
    """One or more invalid config values; the message lists each key, its problem and the fix.

    A RunError: Pulumi reports it as the message alone, without a Python traceback.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "Invalid stack configuration (nothing was changed):\n"
            + "\n".join(f"  - {p}" for p in self.problems)
        )


class ConfigSource(Protocol):
    """What `pulumi.Config` offers; a plain dict-backed source is used by tests and tooling."""

    def get(self, key: str) -> str | None: ...
    def get_object(self, key: str) -> Any: ...


class RolePurpose(StrEnum):
    """What a role of the stack is for; the values name its resources, outputs and passwordRotation keys."""

    OWNER = "owner"  # owns the database and the schema; runs the migrations
    APP = "app"  # the application: reads and writes data, no DDL
    READONLY = "readonly"  # analysts
    CLEANUP = "cleanup"  # the token-cleanup job


@dataclass(frozen=True)
class RoleNames:
    """The role name of each purpose: one field per RolePurpose, named by its value."""

    owner: str
    app: str
    readonly: str
    cleanup: str

    def of(self, purpose: RolePurpose) -> str:
        return str(getattr(self, purpose.value))

    def items(self) -> tuple[tuple[RolePurpose, str], ...]:
        return tuple((purpose, self.of(purpose)) for purpose in RolePurpose)

    def all(self) -> tuple[str, ...]:
        return tuple(self.of(purpose) for purpose in RolePurpose)


@dataclass(frozen=True)
class ContainerServer:
    image: str
    host_port: int
    bind_address: str
    superuser: str
    docker_host: str | None = None  # docker:host, the engine's address; None: DOCKER_HOST or the default socket


@dataclass(frozen=True)
class ExternalServer:
    host: str
    port: int
    admin_user: str
    admin_password_key: str  # read as a secret by the program, never kept in this object
    sslmode: str
    admin_database: str
    superuser: bool


@dataclass(frozen=True)
class CleanupJobSettings:
    name: str
    schedule: str
    enabled: bool
    batch_size: int


@dataclass(frozen=True)
class ScratchSettings:
    """A throwaway server to apply migrations on (the rehearsal's, the adoption check's)."""

    # The config key the program reads the server's superuser URL from as a secret (never kept here);
    # None: a scratch database on the stack's own container, else a local container of `image`.
    url_key: str | None
    image: str


ADOPT_TOOLS = ("knex", "flyway", "dbmate", "golang-migrate")


@dataclass(frozen=True)
class AdoptionSettings:
    """adoptFrom: take over an existing database whose schema another migration tool built (external mode)."""

    tool: str  # one of ADOPT_TOOLS
    accept: frozenset[str]  # adoptAccept: ids of schema differences accepted ("index customers_email_idx")
    scratch: ScratchSettings  # adoptScratchUrl, adoptScratchImage: where the files are applied to compare


@dataclass(frozen=True)
class MigrationSettings:
    directory: str
    accept_checksums: frozenset[str]
    # allowOutOfOrder: apply a pending file numbered below the highest applied version (refused by default).
    allow_out_of_order: bool = False
    # migrationLockTimeout, migrationLockRetries, migrationLockRetryDelay, migrationStatementTimeout.
    limits: StatementLimits = field(default_factory=lambda: StatementLimits(lock_timeout_ms=DEFAULT_LOCK_TIMEOUT_MS))


@dataclass(frozen=True)
class RehearsalSettings:
    # rehearseMigrations: `pulumi preview` runs each pending migration on a scratch copy of the schema.
    enabled: bool = True
    # rehearsalReadTimeout: the statement timeout of every read on the target during a preview.
    read_timeout_ms: int = 10000
    # rehearsalScratchUrl; the local container's image is the stack's `image`, in either mode.
    scratch: ScratchSettings = field(default_factory=lambda: ScratchSettings(url_key=None, image=DEFAULT_IMAGE))


def _scratch(r: _Reader, url_key: str, image: str) -> ScratchSettings:
    """The scratch server of `url_key` if it is set (its URL checked, never quoted: it carries a password)."""
    url = r.source.get(url_key)
    if url in (None, ""):
        return ScratchSettings(url_key=None, image=image)
    if message := _scratch_url_problem(str(url), url_key):
        r.problem(url_key, message)
    return ScratchSettings(url_key=url_key, image=image)


def _scratch_url_problem(value: str, key: str) -> str | None:
    how = (f"set it with `pulumi config set --secret {key} "
           "postgresql://postgres:PASSWORD@HOST:PORT/postgres` (the superuser of a throwaway server), "
           f"or remove it (`pulumi config rm {key}`) to use a local scratch container")
    if not value.startswith(("postgresql://", "postgres://")):
        return f"not a postgresql:// URL; {how}"
    try:
        params = conninfo_to_dict(value)
    except psycopg.ProgrammingError:
        return f"not a valid postgresql:// URL; {how}"
    if not params.get("host"):
        return f"the URL names no host; {how}"
    if not all(part.isdigit() for part in str(params.get("port") or "5432").split(",")):
        return f"the URL's port is not a number; {how}"
    return None


def migration_fixes(namespace: str) -> dict[str, str]:
    """How a user of this program accepts what the migration library refuses, in this program's config
    keys (the library and the Migration resource know none); `{version}` stands for the migration's."""
    return {
        "accept_checksum": f'add "{{version}}" to the stack config `{namespace}:acceptChecksums` and run '
                           '`pulumi up` (see docs/migrations.md, "Migrations")',
        "allow_out_of_order": f"set the stack config `{namespace}:allowOutOfOrder` to true "
                              "(`pulumi config set allowOutOfOrder true`), run `pulumi up`, then remove it "
                              "(`pulumi config rm allowOutOfOrder`)",
        "keep_data": f"`{namespace}:keepDataOnDestroy` is true",
        "lock_wait": f"allow a longer wait: raise `{namespace}:migrationLockTimeout` (ms per attempt) or "
                     f"`{namespace}:migrationLockRetries` (see docs/operations.md, \"Failure drills\")",
    }


def checked_migrations(directory: Path, settings: MigrationSettings, namespace: str) -> list[MigrationFile]:
    """The migrations of `directory` (migrationsDir), loaded and validated once, before any resource is
    declared; what the library refuses is worded in this program's config keys."""
    try:
        # Files a checkpoint holds were validated before they were applied: not parsed again.
        checkpoint = load_checkpoint(directory) if directory.is_dir() else None
        held = {e.version: e.checksum for e in checkpoint.migrations} if checkpoint else None
        files = load_migrations(directory, validated=held)
    except MigrationFileError as exc:
        raise ConfigError([f"{namespace}:migrationsDir: {exc} ({FILES_HINT})"]) from exc
    unknown = sorted(settings.accept_checksums - {f.version for f in files})
    if unknown:
        raise ConfigError([
            f"{namespace}:acceptChecksums: versions {unknown} have no file in {directory}; "
            "remove them from the stack config"
        ])
    return files


def checked_checkpoint(directory: Path, files: list[MigrationFile], namespace: str) -> Checkpoint | None:
    """The checkpoint of `directory` (migrationsDir), None without one; a held file that is missing or
    was edited since it was folded is refused before any resource is declared."""
    try:
        checkpoint = load_checkpoint(directory)
        split_at_checkpoint(files, checkpoint)
    except MigrationFileError as exc:
        raise ConfigError([f"{namespace}:migrationsDir: {exc} ({FILES_HINT})"]) from exc
    return checkpoint


@dataclass(frozen=True)
class StackConfig:
    mode: Literal["container", "external"]
    database: str
    roles: RoleNames
    password_length: int
    server: ContainerServer | ExternalServer
    migrations: MigrationSettings
    cleanup_job: CleanupJobSettings
    # Pulumi `protect` on what holds data (volume, database, migrations): destroy and replacement stop.
    protect_data: bool = True
    # keepDataOnDestroy: destroy forgets the volume, database, roles, migrations and claim instead of deleting them.
    keep_data_on_destroy: bool = False
    # passwordRotation: a counter per role ("all" for every role); see _password_rotation.
    password_rotation: dict[str, int] = field(default_factory=dict)
    rehearsal: RehearsalSettings = field(default_factory=RehearsalSettings)
    adoption: AdoptionSettings | None = None

    def rotation_keepers(self, purpose: RolePurpose) -> dict[str, str] | None:
        """RandomPassword keepers of one role: any change of its counter or of "all" makes a new password.

        None while both are 0, so stacks that never rotated keep their passwords (no keepers, as before).
        """
        own, every = self.password_rotation.get(purpose, 0), self.password_rotation.get("all", 0)
        return {"rotation": f"all={every},{purpose}={own}"} if own or every else None


def validate_cron_schedule(schedule: str) -> str | None:
    """None if pg_cron (1.4+) accepts `schedule`, else what is wrong with it."""
    fields = schedule.split()
    if len(fields) == 5 and not all(CRON_FIELD.match(f) for f in fields):
        return (
            f"{schedule!r} uses syntax pg_cron 1.4 does not accept (L, W, #, ? or an unknown word); "
            "use numbers, names, '*', ranges 'a-b', lists 'a,b' and steps '/n', e.g. '*/15 * * * *'"
        )
    if len(fields) != 5:
        return (
            f"{schedule!r} has {len(fields)} fields; pg_cron takes the 5 standard cron fields "
            "'minute hour day-of-month month day-of-week', e.g. '*/15 * * * *'"
        )
    if not croniter.is_valid(schedule):
        return f"{schedule!r} is not a valid cron expression, e.g. '*/15 * * * *' or '0 3 * * *'"
    return None


class _Reader:
    """Typed getters that collect problems instead of stopping at the first one."""

    def __init__(self, source: ConfigSource, namespace: str) -> None:
        self.source = source
        self.namespace = namespace
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.namespace}:{key}: {message}")

    def text(self, key: str, default: str, check: Callable[[str], str | None] | None = None) -> str:
        value = self.source.get(key)
        value = default if value is None or value == "" else value
        if check is not None and (message := check(value)):
            self.problem(key, message)
        return value

    def integer(self, key: str, default: int, low: int, high: int, hint: str) -> int:
        raw = self.source.get(key)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problem(key, f"{raw!r} is not a whole number; {hint}")
            return default
        if not low <= value <= high:
            self.problem(key, f"{value} is out of range; {hint}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        raw = self.source.get(key)
        if raw is None or raw == "":
            return default
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        self.problem(key, f"{raw!r} is not a boolean; set it to true or false")
        return default

    def identifier(self, key: str, default: str) -> str:
        return self.text(key, default, check=_identifier_problem)


def _identifier_problem(value: str) -> str | None:
    if IDENTIFIER.match(value):
        return None
    return (
        f"{value!r} is not a plain PostgreSQL identifier; use 1-63 characters of lower-case "
        "letters, digits and underscores, starting with a letter or underscore"
    )


def _ip_problem(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address"
    return None


def _address_problem(value: str) -> str | None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address; use 127.0.0.1 (the default) to publish on loopback only"
    if not address.is_loopback:
        return (
            f"{value} is not a loopback address: the database would be reachable from other hosts. "
            "Use 127.0.0.1, or set exposeBeyondLoopback: true if that is really intended"
        )
    return None


def load(source: ConfigSource, namespace: str, stack: str = "", docker_host: str | None = None) -> StackConfig:
    """Read and validate the whole configuration; raise ConfigError listing every problem.

    `docker_host`: the docker provider's `docker:host` config, the engine a container stack runs on."""
    r = _Reader(source, namespace)
    port_hint = "use a TCP port between 1 and 65535"

    mode = r.text(
        "mode", "container",
        check=lambda v: None if v in MODES else f"unknown mode {v!r}; use 'container' or 'external'",
    )
    database = r.identifier("databaseName", "customer_insights")
    prefix = r.identifier("rolePrefix", "ci")
    roles = RoleNames(
        owner=f"{prefix}_owner", app=f"{prefix}_app", readonly=f"{prefix}_readonly", cleanup=f"{prefix}_token_cleanup"
    )
    for role in roles.all():
        if len(role) > 63:
            r.problem("rolePrefix", f"role name {role!r} is longer than 63 characters; use a shorter prefix")
    password_length = r.integer(
        "passwordLength", 32, MIN_PASSWORD_LENGTH, MAX_PASSWORD_LENGTH,
        f"generated passwords need {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters",
    )

    password_rotation = _password_rotation(r, source)

    server: ContainerServer | ExternalServer
    if mode == "external":
        host = r.text("externalHost", "")
        if not host:
            r.problem("externalHost", "required in external mode: the managed server's host name or address")
        if source.get("externalAdminPassword") in (None, ""):
            r.problem(
                "externalAdminPassword",
                "required in external mode: `pulumi config set --secret externalAdminPassword <password>`",
            )
        server = ExternalServer(
            host=host,
            port=r.integer("externalPort", 5432, 1, 65535, port_hint),
            admin_user=r.text("externalAdminUser", "postgres"),
            admin_password_key="externalAdminPassword",
            sslmode=r.text(
                "externalSslMode", "require",
                check=lambda v: None if v in SSL_MODES else f"{v!r} is not a libpq sslmode; use one of {SSL_MODES}",
            ),
            admin_database=r.text("externalAdminDatabase", "postgres"),
            superuser=r.boolean("externalAdminIsSuperuser", False),
        )
    else:
        expose = r.boolean("exposeBeyondLoopback", False)
        server = ContainerServer(
            image=r.text("image", DEFAULT_IMAGE),
            host_port=r.integer("hostPort", 55432, 1, 65535, port_hint),
            bind_address=r.text("bindAddress", "127.0.0.1", check=_ip_problem if expose else _address_problem),
            superuser="postgres",
            docker_host=docker_host,
        )

    try:
        accept = source.get_object("acceptChecksums") or []
    except Exception:  # Pulumi raises its own type error for a value that is not JSON
        accept = None
        r.problem("acceptChecksums", "must be a JSON list; set it with "
                  "`pulumi config set --path 'acceptChecksums[0]' 003`")
    if accept is None:
        accept = []
    elif not isinstance(accept, list) or not all(isinstance(v, str) and VERSION.match(v) for v in accept):
        r.problem("acceptChecksums", f"{accept!r} must be a list of migration versions, e.g. [\"003\"]")
        accept = []
    migrations = MigrationSettings(
        directory=r.text("migrationsDir", "sql"),
        accept_checksums=frozenset(accept),
        allow_out_of_order=r.boolean("allowOutOfOrder", False),
        limits=_statement_limits(r),
    )

    cleanup_job = CleanupJobSettings(
        name=r.text("cleanupJobName", f"{database}-delete-expired-refresh-tokens"),
        schedule=r.text("cleanupSchedule", "*/15 * * * *", check=validate_cron_schedule),
        enabled=r.boolean("cleanupEnabled", True),
        batch_size=r.integer("cleanupBatchSize", 5000, 1, 1_000_000, "use 1 to 1000000 rows per batch"),
    )

    rehearsal = RehearsalSettings(
        enabled=r.boolean("rehearseMigrations", True),
        read_timeout_ms=r.integer("rehearsalReadTimeout", 10000, 100, 600_000,
                                  "the timeout of each read on the target, in milliseconds: 100 to 600000"),
        scratch=_scratch(r, "rehearsalScratchUrl",
                         server.image if isinstance(server, ContainerServer) else r.text("image", DEFAULT_IMAGE)),
    )

    # Only the throwaway `dev` stack defaults to unprotected: a stack that forgets the key is safe.
    protect_data = r.boolean("protectData", stack != DEV_STACK)
    keep_data_on_destroy = r.boolean("keepDataOnDestroy", False)

    adoption = _adoption(r, source, mode)
    _server_owned_names(r, database, roles, server)

    if r.problems:
        raise ConfigError(r.problems)
    return StackConfig(
        mode="external" if mode == "external" else "container",
        database=database,
        roles=roles,
        password_length=password_length,
        server=server,
        migrations=migrations,
        cleanup_job=cleanup_job,
        protect_data=protect_data,
        keep_data_on_destroy=keep_data_on_destroy,
        password_rotation=password_rotation,
        rehearsal=rehearsal,
        adoption=adoption,
    )


MAX_TIMEOUT_MS = 24 * 3600 * 1000


def _statement_limits(r: _Reader) -> StatementLimits:
    """The limits every migration statement runs under (see infra.migrate.session)."""
    default = StatementLimits()
    problems_before = len(r.problems)
    lock_timeout = r.integer(
        "migrationLockTimeout", DEFAULT_LOCK_TIMEOUT_MS, 0, MAX_TIMEOUT_MS,
        "milliseconds a migration statement may wait for a lock, e.g. 5000; 0 waits as long as it takes",
    )
    statement_timeout = (
        None if r.source.get("migrationStatementTimeout") in (None, "") else r.integer(
            "migrationStatementTimeout", 0, 0, MAX_TIMEOUT_MS,
            "milliseconds a migration statement may run, e.g. 600000; 0 for no limit; "
            "remove the key to keep the server's setting",
        )
    )
    retries = r.integer("migrationLockRetries", default.lock_retries, 0, 100,
                        "how often a migration blocked by a lock is tried again, 0 to 100")
    delay = r.integer("migrationLockRetryDelay", default.retry_delay_ms, 0, 600_000,
                      "milliseconds before the first retry (doubling each time), 0 to 600000")
    if len(r.problems) > problems_before:  # reported with the others; the limits are not used
        return default
    return StatementLimits(lock_timeout_ms=lock_timeout, statement_timeout_ms=statement_timeout,
                           lock_retries=retries, retry_delay_ms=delay, retry_delay_max_ms=default.retry_delay_max_ms)


def _adoption(r: _Reader, source: ConfigSource, mode: str) -> AdoptionSettings | None:
    tool = r.text("adoptFrom", "", check=lambda v: None if v in ("", *ADOPT_TOOLS) else (
        f"{v!r} is not a migration tool this program adopts from; use one of {', '.join(ADOPT_TOOLS)}"))
    try:
        accept = source.get_object("adoptAccept") or []
    except Exception:  # Pulumi raises its own type error for a value that is not JSON
        accept = None
    if not isinstance(accept, list) or not all(isinstance(v, str) and v for v in accept):
        r.problem("adoptAccept", "must be a list of difference ids as the refusal names them, e.g. "
                  "`pulumi config set --path 'adoptAccept[0]' 'index customers_email_idx'`")
        accept = []
    scratch = _scratch(r, "adoptScratchUrl", r.text("adoptScratchImage", DEFAULT_IMAGE))
    if not tool:
        if accept:
            r.problem("adoptAccept", "set only while adopting (adoptFrom); remove it: `pulumi config rm adoptAccept`")
        return None
    if mode != "external":
        r.problem("adoptFrom", "adoption takes over a database on an existing server: set mode to external "
                  "(a container stack creates its own database)")
    return AdoptionSettings(tool=tool, accept=frozenset(accept), scratch=scratch)


def _server_owned_names(r: _Reader, database: str, roles: RoleNames,
                        server: ContainerServer | ExternalServer) -> None:
    """Names the server owns or reserves: the program must never manage (and on destroy drop) them."""
    admin_database = server.admin_database if isinstance(server, ExternalServer) else "postgres"
    if database in SERVER_DATABASES or database == admin_database:
        what = ("a database the server needs" if database in SERVER_DATABASES
                else "the admin database Pulumi connects to")
        r.problem("databaseName", f"{database!r} is {what}: this stack would manage it and drop it on destroy; "
                                  "choose the application's own name, e.g. `pulumi config set databaseName "
                                  "customer_insights`")
    admin_user = server.superuser if isinstance(server, ContainerServer) else server.admin_user
    reserved = [role for role in roles.all() if role.startswith(RESERVED_ROLE_PREFIX)]
    if reserved:
        r.problem("rolePrefix", f"role names {', '.join(reserved)} start with {RESERVED_ROLE_PREFIX!r}, which "
                                "PostgreSQL reserves for its own roles; use a prefix that does not start with "
                                "'pg', e.g. `pulumi config set rolePrefix ci`")
    if admin_user in roles.all():
        who = "the container's superuser" if isinstance(server, ContainerServer) else "externalAdminUser"
        r.problem("rolePrefix", f"role name {admin_user!r} is {who}, the role Pulumi administers the server "
                                "with: this stack would manage it and drop it on destroy; use another prefix, "
                                "e.g. `pulumi config set rolePrefix ci`")


ROTATION_KEYS = ("all", *(purpose.value for purpose in RolePurpose))


def _password_rotation(r: _Reader, source: ConfigSource) -> dict[str, int]:
    """passwordRotation: {"app": 1, "all": 2, ...}; raising a counter rotates that role's password."""
    how = ("set e.g. `pulumi config set --path passwordRotation.app 1` (one role) or "
           "`pulumi config set --path passwordRotation.all 1` (every role); raise the number to rotate again")
    try:
        value = source.get_object("passwordRotation")
    except Exception:  # Pulumi raises its own type error for a value that is not JSON
        r.problem("passwordRotation", f"must be a JSON object of counters; {how}")
        return {}
    if value is None:
        return {}
    if not isinstance(value, dict):
        r.problem("passwordRotation", f"{value!r} must be an object of counters; {how}")
        return {}
    counters: dict[str, int] = {}
    for key, count in value.items():
        if isinstance(count, str) and count.isdigit():  # `config set --path` may keep "1" a string
            count = int(count)
        if key not in ROTATION_KEYS:
            r.problem(f"passwordRotation.{key}", f"unknown role {key!r}; use one of {', '.join(ROTATION_KEYS)}")
        elif isinstance(count, bool) or not isinstance(count, int) or count < 0:
            r.problem(f"passwordRotation.{key}", f"{count!r} is not a whole number >= 0; {how}")
        else:
            counters[key] = count
    return counters


class DictSource:
    """A ConfigSource over a plain dict of config values (tests, tooling)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def get(self, key: str) -> str | None:
        value = self.values.get(key)
        if value is None:
            return None
        return str(value).lower() if isinstance(value, bool) else str(value)

    def get_object(self, key: str) -> Any:
        return self.values.get(key)
