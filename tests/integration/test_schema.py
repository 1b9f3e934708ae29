"""The schema migrations in sql/ against a real PostgreSQL: the spec (docs/schema.md maps it to the SQL)
checked through the catalog and through rows that each constraint must reject or accept."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlparse
from psycopg import errors, sql

from infra.migrate import MigrationFailedError, Migrator, is_transactional, load_migrations
from infra.migrate.tracking import TABLE as TRACKING_TABLE

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SQL_DIR = REPO / "sql"
# The spec's migration order, then the cleanup routine.
MIGRATIONS = [
    "001_create_organizations",
    "002_create_users",
    "003_create_customers",
    "004_create_customer_interactions",
    "005_create_behavior_patterns",
    "006_add_indexes",
    "007_create_refresh_tokens",
    "008_create_refresh_token_cleanup",
    "009_refresh_token_cleanup_in_heap_order",
]
BCRYPT_10 = "$2b$10$" + "N9qo8uLOickgx2ZMRZoMye" + "IjZAgcfl7p92ldGxad68LJZdL17lhWy"  # 22 salt + 31 hash
assert len(BCRYPT_10) == 60


FILES = {m.filename.removesuffix(".sql"): m for m in load_migrations(SQL_DIR)}


def up(dsn: str, names: list[str]) -> None:
    """Apply these migrations in order, as `pulumi up` does (infra.migrate: transactions, headers, tracking)."""
    Migrator(dsn).apply_all([FILES[name] for name in names])


def tracked(dsn: str) -> list[str]:
    return list(Migrator(dsn).applied())


def down(dsn: str, names: list[str]) -> None:
    """Revert these migrations in the order given, with their down scripts, as `pulumi destroy` does."""
    migrator = Migrator(dsn)
    for name in names:
        assert migrator.revert(FILES[name]), f"{name} was not applied"


@pytest.fixture
def conn(fresh_db: str) -> Iterator[psycopg.Connection]:
    """Autocommit superuser connection to a fresh database with every migration applied."""
    up(fresh_db, MIGRATIONS)
    with psycopg.connect(fresh_db, autocommit=True) as c:
        yield c


def insert(conn: psycopg.Connection, table: str, **values: Any) -> dict[str, Any]:
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING *").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder() * len(values)),
    )
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    row = cur.execute(query, list(values.values())).fetchone()
    assert row is not None
    return row


class Seed:
    """Valid rows for every table; each method takes overrides for the column under test."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.org = insert(conn, "organizations", name="Acme")["id"]

    def user(self, **kw: Any) -> dict[str, Any]:
        row = dict(email=f"{uuid.uuid4().hex}@example.com", password_hash=BCRYPT_10, first_name="Ada",
                   last_name="Lovelace", role="analyst", organization_id=self.org)
        return insert(self.conn, "users", **(row | kw))

    def customer(self, **kw: Any) -> dict[str, Any]:
        now = datetime.now(UTC)
        row = dict(organization_id=self.org, external_id=uuid.uuid4().hex, first_seen_at=now,
                   last_seen_at=now)
        return insert(self.conn, "customers", **(row | kw))

    def interaction(self, **kw: Any) -> dict[str, Any]:
        if "customer_id" not in kw:
            kw["customer_id"] = self.customer()["id"]
        row = dict(organization_id=self.org, timestamp=datetime.now(UTC) - timedelta(seconds=1),
                   channel="web", event_type="page_view")
        return insert(self.conn, "customer_interactions", **(row | kw))

    def pattern(self, **kw: Any) -> dict[str, Any]:
        if "customer_id" not in kw:
            kw["customer_id"] = self.customer()["id"]
        row = dict(organization_id=self.org, pattern_type="churn_risk", confidence=0.5, frequency=3,
                   detected_at=datetime.now(UTC))
        return insert(self.conn, "behavior_patterns", **(row | kw))

    def token(self, **kw: Any) -> dict[str, Any]:
        if "user_id" not in kw:
            kw["user_id"] = self.user()["id"]
        row = dict(token=uuid.uuid4().hex, expires_at=datetime.now(UTC) + timedelta(days=1))
        return insert(self.conn, "refresh_tokens", **(row | kw))

    def make(self, table: str, **kw: Any) -> dict[str, Any]:
        if table == "organizations":
            return insert(self.conn, "organizations", **({"name": "Other"} | kw))
        maker = {"users": self.user, "customers": self.customer, "customer_interactions": self.interaction,
                 "behavior_patterns": self.pattern, "refresh_tokens": self.token}[table]
        return maker(**kw)


@pytest.fixture
def seed(conn: psycopg.Connection) -> Seed:
    return Seed(conn)


# ---------------------------------------------------------------------------------------------------
# The spec, written out: columns (type, NOT NULL, default), indexes, constraints, triggers.
# ---------------------------------------------------------------------------------------------------
UUID_PK = ("uuid", True, "gen_random_uuid()")
CREATED = ("timestamp with time zone", True, "now()")
UPDATED = ("timestamp with time zone", True, "now()")
TSTZ_NULL = ("timestamp with time zone", False, None)
TSTZ_NOT_NULL = ("timestamp with time zone", True, None)


def varchar(n: int, not_null: bool) -> tuple[str, bool, None]:
    return (f"character varying({n})", not_null, None)


EXPECTED_COLUMNS: dict[str, dict[str, tuple[str, bool, str | None]]] = {
    "organizations": {
        "id": UUID_PK,
        "name": varchar(255, True),
        "created_at": CREATED,
        "updated_at": UPDATED,
    },
    "users": {
        "id": UUID_PK,
        "email": varchar(255, True),
        "password_hash": varchar(255, True),
        "first_name": varchar(100, True),
        "last_name": varchar(100, True),
        "role": varchar(50, True),
        "permissions": ("jsonb", False, None),
        "organization_id": ("uuid", True, None),
        "created_at": CREATED,
        "updated_at": UPDATED,
        "last_login_at": TSTZ_NULL,
    },
    "customers": {
        "id": UUID_PK,
        "organization_id": ("uuid", True, None),
        "external_id": varchar(255, True),
        "email": varchar(255, False),
        "first_name": varchar(100, False),
        "last_name": varchar(100, False),
        "segment": varchar(100, False),
        "metadata": ("jsonb", False, None),
        "first_seen_at": TSTZ_NOT_NULL,
        "last_seen_at": TSTZ_NOT_NULL,
        "interaction_count": ("integer", False, None),
        "average_sentiment": ("numeric(5,4)", False, None),
        "created_at": CREATED,
        "updated_at": UPDATED,
    },
    "customer_interactions": {
        "id": UUID_PK,
        "customer_id": ("uuid", True, None),
        "organization_id": ("uuid", True, None),
        "timestamp": TSTZ_NOT_NULL,
        "channel": varchar(50, True),
        "event_type": varchar(100, True),
        "content": ("text", False, None),
        "sentiment": ("jsonb", False, None),
        "sentiment_confidence": ("numeric(5,4)", False, None),
        "metadata": ("jsonb", False, None),
        "processed_at": TSTZ_NULL,
        "created_at": CREATED,
    },
    "behavior_patterns": {
        "id": UUID_PK,
        "customer_id": ("uuid", True, None),
        "organization_id": ("uuid", True, None),
        "pattern_type": varchar(100, True),
        "confidence": ("numeric(5,4)", True, None),
        "frequency": ("integer", True, None),
        "description": ("text", False, None),
        "metadata": ("jsonb", False, None),
        "detected_at": TSTZ_NOT_NULL,
        "valid_until": TSTZ_NULL,
        "created_at": CREATED,
    },
    "refresh_tokens": {
        "id": UUID_PK,
        "user_id": ("uuid", True, None),
        "token": ("text", True, None),
        "expires_at": TSTZ_NOT_NULL,
        "created_at": CREATED,
    },
    # Not in the spec: the cleanup's run history (008).
    "refresh_token_cleanup_runs": {
        "id": ("bigint", True, None),  # GENERATED ALWAYS AS IDENTITY, checked separately
        "started_at": TSTZ_NOT_NULL,
        "finished_at": TSTZ_NOT_NULL,
        "cutoff": TSTZ_NOT_NULL,
        "batch_size": ("integer", True, None),
        "batches": ("integer", True, None),
        "rows_deleted": ("bigint", True, None),
    },
}


def idx(name: str, table: str, using: str, unique: bool = False) -> tuple[str, str]:
    kind = "UNIQUE INDEX" if unique else "INDEX"
    return name, f"CREATE {kind} {name} ON public.{table} USING {using}"


# Every index, with the spec line it implements. Indexes the spec asks for that a PK/UNIQUE
# constraint already provides are that constraint's index, not a second one.
EXPECTED_INDEXES = dict([
    # organizations: "Primary key on id"
    idx("organizations_pkey", "organizations", "btree (id)", unique=True),
    # users: PK; "Index on email" = the UNIQUE(email) index; "Index on organization_id"
    idx("users_pkey", "users", "btree (id)", unique=True),
    idx("users_email_key", "users", "btree (email)", unique=True),
    idx("users_organization_id_idx", "users", "btree (organization_id)"),
    # customers: PK; "Composite index on (organization_id, external_id)" = the UNIQUE constraint's
    # index, which also serves "Index on organization_id" (leading column); email; segment
    idx("customers_pkey", "customers", "btree (id)", unique=True),
    idx("customers_organization_id_external_id_key", "customers", "btree (organization_id, external_id)",
        unique=True),
    idx("customers_email_idx", "customers", "btree (email)"),
    idx("customers_segment_idx", "customers", "btree (segment)"),
    # customer_interactions: PK, customer_id, organization_id, timestamp DESC, channel (004);
    # sentiment->>'label', GIN metadata, GIN full text in English (006)
    idx("customer_interactions_pkey", "customer_interactions", "btree (id)", unique=True),
    idx("customer_interactions_customer_id_idx", "customer_interactions", "btree (customer_id)"),
    idx("customer_interactions_organization_id_idx", "customer_interactions", "btree (organization_id)"),
    idx("customer_interactions_timestamp_idx", "customer_interactions", 'btree ("timestamp" DESC)'),
    idx("customer_interactions_channel_idx", "customer_interactions", "btree (channel)"),
    idx("customer_interactions_sentiment_label_idx", "customer_interactions",
        "btree (((sentiment ->> 'label'::text)))"),
    idx("customer_interactions_metadata_idx", "customer_interactions", "gin (metadata)"),
    idx("customer_interactions_content_fts_idx", "customer_interactions",
        "gin (to_tsvector('english'::regconfig, content))"),
    # behavior_patterns: PK, customer_id, organization_id, pattern_type, detected_at DESC
    idx("behavior_patterns_pkey", "behavior_patterns", "btree (id)", unique=True),
    idx("behavior_patterns_customer_id_idx", "behavior_patterns", "btree (customer_id)"),
    idx("behavior_patterns_organization_id_idx", "behavior_patterns", "btree (organization_id)"),
    idx("behavior_patterns_pattern_type_idx", "behavior_patterns", "btree (pattern_type)"),
    idx("behavior_patterns_detected_at_idx", "behavior_patterns", "btree (detected_at DESC)"),
    # refresh_tokens: PK, user_id, token; plus (expires_at, id) for the periodic cleanup
    idx("refresh_tokens_pkey", "refresh_tokens", "btree (id)", unique=True),
    idx("refresh_tokens_user_id_idx", "refresh_tokens", "btree (user_id)"),
    idx("refresh_tokens_token_idx", "refresh_tokens", "btree (token)"),
    idx("refresh_tokens_expires_at_id_idx", "refresh_tokens", "btree (expires_at, id)"),
    idx("refresh_token_cleanup_runs_pkey", "refresh_token_cleanup_runs", "btree (id)", unique=True),
])

# Foreign keys with their ON DELETE behaviour (decided in docs/schema.md).
EXPECTED_FOREIGN_KEYS = {
    "users_organization_id_fkey":
        ("users", "FOREIGN KEY (organization_id) REFERENCES organizations(id) ON DELETE RESTRICT"),
    "customers_organization_id_fkey":
        ("customers", "FOREIGN KEY (organization_id) REFERENCES organizations(id) ON DELETE RESTRICT"),
    "customer_interactions_customer_id_fkey":
        ("customer_interactions", "FOREIGN KEY (customer_id) REFERENCES customers(id) ON DELETE CASCADE"),
    "customer_interactions_organization_id_fkey":
        ("customer_interactions",
         "FOREIGN KEY (organization_id) REFERENCES organizations(id) ON DELETE RESTRICT"),
    "behavior_patterns_customer_id_fkey":
        ("behavior_patterns", "FOREIGN KEY (customer_id) REFERENCES customers(id) ON DELETE CASCADE"),
    "behavior_patterns_organization_id_fkey":
        ("behavior_patterns",
         "FOREIGN KEY (organization_id) REFERENCES organizations(id) ON DELETE RESTRICT"),
    "refresh_tokens_user_id_fkey":
        ("refresh_tokens", "FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE"),
}

# CHECK constraints as PostgreSQL deparses them (pg_get_constraintdef), so that a widened list or
# range is caught, not only a missing constraint.
EXPECTED_CHECKS = {
    "users_role_check": ("users", "CHECK (((role)::text = ANY ((ARRAY['admin'::character varying, "
                         "'analyst'::character varying, 'viewer'::character varying])::text[])))"),
    "users_password_hash_bcrypt_10_check":
        ("users", "CHECK (((password_hash)::text ~ '^\\$2[aby]\\$10\\$[./A-Za-z0-9]{53}$'::text))"),
    "customers_average_sentiment_range_check":
        ("customers", "CHECK (((average_sentiment >= ('-1'::integer)::numeric) "
                      "AND (average_sentiment <= (1)::numeric)))"),
    "customers_interaction_count_nonnegative_check": ("customers", "CHECK ((interaction_count >= 0))"),
    "customer_interactions_channel_check":
        ("customer_interactions", "CHECK (((channel)::text = ANY ((ARRAY['web'::character varying, "
                                  "'mobile'::character varying, 'email'::character varying, "
                                  "'chat'::character varying, 'phone'::character varying])::text[])))"),
    "customer_interactions_sentiment_confidence_range_check":
        ("customer_interactions", "CHECK (((sentiment_confidence >= (0)::numeric) "
                                  "AND (sentiment_confidence <= (1)::numeric)))"),
    "behavior_patterns_confidence_range_check":
        ("behavior_patterns", "CHECK (((confidence >= (0)::numeric) AND (confidence <= (1)::numeric)))"),
    "behavior_patterns_frequency_positive_check": ("behavior_patterns", "CHECK ((frequency > 0))"),
    "behavior_patterns_valid_until_after_detected_at_check":
        ("behavior_patterns", "CHECK ((valid_until > detected_at))"),
    "refresh_tokens_expires_after_created_check": ("refresh_tokens", "CHECK ((expires_at > created_at))"),
    "refresh_tokens_lifetime_max_7_days_check":
        ("refresh_tokens", "CHECK ((expires_at <= (created_at + '168:00:00'::interval)))"),
    "refresh_token_cleanup_runs_counts_check":
        ("refresh_token_cleanup_runs",
         "CHECK (((batch_size > 0) AND (batches >= 0) AND (rows_deleted >= 0)))"),
}

EXPECTED_TRIGGERS = {
    "organizations_set_updated_at":
        "CREATE TRIGGER organizations_set_updated_at BEFORE UPDATE ON public.organizations "
        "FOR EACH ROW EXECUTE FUNCTION set_updated_at()",
    "users_set_updated_at":
        "CREATE TRIGGER users_set_updated_at BEFORE UPDATE ON public.users "
        "FOR EACH ROW EXECUTE FUNCTION set_updated_at()",
    "customers_set_updated_at":
        "CREATE TRIGGER customers_set_updated_at BEFORE UPDATE ON public.customers "
        "FOR EACH ROW EXECUTE FUNCTION set_updated_at()",
    "customer_interactions_timestamp_not_future":
        'CREATE TRIGGER customer_interactions_timestamp_not_future BEFORE INSERT OR UPDATE OF "timestamp" '
        "ON public.customer_interactions FOR EACH ROW "
        'WHEN ((new."timestamp" > clock_timestamp())) '
        "EXECUTE FUNCTION customer_interactions_reject_future_timestamp()",
}


def rows(conn: psycopg.Connection, query: str) -> list[tuple[Any, ...]]:
    return conn.execute(query).fetchall()  # type: ignore[arg-type]


def test_columns_match_the_spec(conn: psycopg.Connection) -> None:
    actual: dict[str, dict[str, tuple[str, bool, str | None]]] = {}
    for table, column, type_, not_null, default in rows(conn, """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid)
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid AND c.relkind = 'r'
          JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attnum > 0 AND NOT a.attisdropped"""):
        actual.setdefault(table, {})[column] = (type_, not_null, default)
    # Applied as `pulumi up` applies them: the runner's tracking table is there too.
    assert set(actual.pop(TRACKING_TABLE)) == {"version", "name", "checksum", "applied_at", "duration_ms",
                                               "applied_by"}
    assert actual == EXPECTED_COLUMNS
    identity = conn.execute("""
        SELECT attidentity FROM pg_attribute
         WHERE attrelid = 'refresh_token_cleanup_runs'::regclass AND attname = 'id'""").fetchone()
    assert identity == ("a",)  # GENERATED ALWAYS


# The migration runner's tracking table (infra.migrate.tracking), keyed by version.
TRACKING_INDEXES = {
    f"{TRACKING_TABLE}_pkey":
        f"CREATE UNIQUE INDEX {TRACKING_TABLE}_pkey ON public.{TRACKING_TABLE} USING btree (version)",
}


def test_indexes_are_exactly_the_spec_ones(conn: psycopg.Connection) -> None:
    actual = dict(rows(conn, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"))
    assert actual == EXPECTED_INDEXES | TRACKING_INDEXES


def test_no_duplicate_or_redundant_indexes(conn: psycopg.Connection) -> None:
    """No two indexes with the same definition, and no B-tree whose keys are a leading prefix of
    another B-tree's keys with the same ordering (the longer one already serves those lookups)."""
    indexes = rows(conn, """
        SELECT i.indexrelid::regclass::text, i.indrelid, am.amname,
               i.indkey::int2[], i.indclass::oid[], i.indoption::int2[],
               pg_get_expr(i.indexprs, i.indrelid), pg_get_expr(i.indpred, i.indrelid)
          FROM pg_index i
          JOIN pg_class c ON c.oid = i.indexrelid
          JOIN pg_am am ON am.oid = c.relam
          JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'""")
    assert len(indexes) == len(EXPECTED_INDEXES) + len(TRACKING_INDEXES)
    signatures = [tuple(map(str, ix[1:])) for ix in indexes]
    assert len(set(signatures)) == len(signatures), "two indexes with the same definition"
    redundant = []
    for a in indexes:
        for b in indexes:
            plain = a[6] is None and b[6] is None and a[7] is None and b[7] is None
            if a is b or not plain or a[1] != b[1] or a[2] != b[2] != "btree":
                continue
            n = len(a[3])
            if n < len(b[3]) and b[3][:n] == a[3] and b[4][:n] == a[4] and b[5][:n] == a[5]:
                redundant.append(f"{a[0]} is a prefix of {b[0]}")
    assert redundant == []


def test_every_foreign_key_is_indexed(conn: psycopg.Connection) -> None:
    """Each FK's columns are the leading columns of some index on the referencing table."""
    unindexed = rows(conn, """
        SELECT con.conname
          FROM pg_constraint con
         WHERE con.contype = 'f' AND con.connamespace = 'public'::regnamespace
           AND NOT EXISTS (
                 SELECT FROM pg_index i
                  WHERE i.indrelid = con.conrelid
                    AND (i.indkey::int2[])[0:cardinality(con.conkey) - 1] = con.conkey)""")
    assert unindexed == []


def test_constraints_are_named_as_documented(conn: psycopg.Connection) -> None:
    fks = {name: (table, definition) for name, table, definition in rows(conn, """
        SELECT conname, conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint
         WHERE connamespace = 'public'::regnamespace AND contype = 'f'""")}
    assert fks == EXPECTED_FOREIGN_KEYS
    checks = {name: (table, definition) for name, table, definition in rows(conn, """
        SELECT conname, conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint
         WHERE connamespace = 'public'::regnamespace AND contype = 'c' AND convalidated""")}
    assert checks == EXPECTED_CHECKS
    keys = dict(rows(conn, """
        SELECT conname, contype::text FROM pg_constraint
         WHERE connamespace = 'public'::regnamespace AND contype IN ('p', 'u')"""))
    assert keys == {name: ("u" if name.endswith("_key") else "p")
                    for name in EXPECTED_INDEXES | TRACKING_INDEXES if name.endswith(("_pkey", "_key"))}


def test_triggers(conn: psycopg.Connection) -> None:
    actual = dict(rows(conn, """
        SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger
         WHERE NOT tgisinternal"""))
    assert actual == EXPECTED_TRIGGERS
    # Every table with an updated_at column has the trigger that maintains it.
    with_updated_at = {t for t, cols in EXPECTED_COLUMNS.items() if "updated_at" in cols}
    assert {name.removesuffix("_set_updated_at") for name in actual if name.endswith("_set_updated_at")} \
        == with_updated_at


# ---------------------------------------------------------------------------------------------------
# Behaviour: every constraint rejects a violating row (naming itself) and accepts a valid one.
# ---------------------------------------------------------------------------------------------------
NOW = datetime.now(UTC)
CHECK_CASES = [
    # (table, constraint, violating values, valid values)
    ("users", "users_role_check", {"role": "superuser"}, {"role": "admin"}),
    ("users", "users_role_check", {"role": "Admin"}, {"role": "viewer"}),
    ("users", "users_role_check", {"role": "owner"}, {"role": "analyst"}),
    ("users", "users_password_hash_bcrypt_10_check", {"password_hash": "hunter2"},
     {"password_hash": BCRYPT_10}),
    ("users", "users_password_hash_bcrypt_10_check", {"password_hash": BCRYPT_10.replace("$10$", "$12$")},
     {"password_hash": BCRYPT_10.replace("$2b$", "$2a$")}),
    ("users", "users_password_hash_bcrypt_10_check", {"password_hash": BCRYPT_10.replace("$2b$", "$2x$")},
     {"password_hash": BCRYPT_10.replace("$2b$", "$2y$")}),
    ("users", "users_password_hash_bcrypt_10_check", {"password_hash": BCRYPT_10[:-1]},
     {"password_hash": BCRYPT_10}),
    ("users", "users_password_hash_bcrypt_10_check", {"password_hash": BCRYPT_10 + "x"},
     {"password_hash": BCRYPT_10}),
    ("users", "users_password_hash_bcrypt_10_check", {"password_hash": BCRYPT_10[:-1] + "!"},
     {"password_hash": BCRYPT_10[:-1] + "/"}),
    ("customers", "customers_average_sentiment_range_check", {"average_sentiment": 1.0001},
     {"average_sentiment": 1}),
    ("customers", "customers_average_sentiment_range_check", {"average_sentiment": -1.0001},
     {"average_sentiment": -1}),
    ("customers", "customers_interaction_count_nonnegative_check", {"interaction_count": -1},
     {"interaction_count": 0}),
    ("customer_interactions", "customer_interactions_channel_check", {"channel": "fax"},
     {"channel": "phone"}),
    ("customer_interactions", "customer_interactions_channel_check", {"channel": "WEB"},
     {"channel": "web"}),
    ("customer_interactions", "customer_interactions_sentiment_confidence_range_check",
     {"sentiment_confidence": 1.0001}, {"sentiment_confidence": 1}),
    ("customer_interactions", "customer_interactions_sentiment_confidence_range_check",
     {"sentiment_confidence": -0.0001}, {"sentiment_confidence": 0}),
    ("behavior_patterns", "behavior_patterns_confidence_range_check", {"confidence": 1.0001},
     {"confidence": 1}),
    ("behavior_patterns", "behavior_patterns_confidence_range_check", {"confidence": -0.0001},
     {"confidence": 0}),
    ("behavior_patterns", "behavior_patterns_frequency_positive_check", {"frequency": 0}, {"frequency": 1}),
    ("behavior_patterns", "behavior_patterns_valid_until_after_detected_at_check",
     {"detected_at": NOW, "valid_until": NOW},
     {"detected_at": NOW, "valid_until": NOW + timedelta(microseconds=1)}),
    ("behavior_patterns", "behavior_patterns_valid_until_after_detected_at_check",
     {"detected_at": NOW, "valid_until": NOW - timedelta(days=1)}, {"detected_at": NOW, "valid_until": None}),
    ("refresh_tokens", "refresh_tokens_expires_after_created_check",
     {"created_at": NOW, "expires_at": NOW}, {"created_at": NOW, "expires_at": NOW + timedelta(seconds=1)}),
    ("refresh_tokens", "refresh_tokens_lifetime_max_7_days_check",
     {"created_at": NOW, "expires_at": NOW + timedelta(days=7, microseconds=1)},
     {"created_at": NOW, "expires_at": NOW + timedelta(days=7)}),
]


@pytest.mark.parametrize(("table", "constraint", "bad", "good"), CHECK_CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(CHECK_CASES)])
def test_check_constraint(seed: Seed, table: str, constraint: str, bad: dict[str, Any],
                          good: dict[str, Any]) -> None:
    with pytest.raises(errors.CheckViolation) as exc:
        seed.make(table, **bad)
    assert exc.value.diag.constraint_name == constraint
    row = seed.make(table, **good)
    for column, value in good.items():
        assert row[column] == value


def test_check_constraints_accept_null_where_the_column_is_optional(seed: Seed) -> None:
    customer = seed.customer(average_sentiment=None, interaction_count=None)
    assert (customer["average_sentiment"], customer["interaction_count"]) == (None, None)
    assert seed.interaction(sentiment_confidence=None)["sentiment_confidence"] is None


@pytest.mark.parametrize("channel", ["web", "mobile", "email", "chat", "phone"])
def test_every_spec_channel_is_accepted(seed: Seed, channel: str) -> None:
    assert seed.interaction(channel=channel)["channel"] == channel


def test_check_constraint_on_update(seed: Seed, conn: psycopg.Connection) -> None:
    user = seed.user()
    with pytest.raises(errors.CheckViolation) as exc:
        conn.execute("UPDATE users SET role = 'owner' WHERE id = %s", (user["id"],))
    assert exc.value.diag.constraint_name == "users_role_check"


def test_token_lifetime_is_168_hours_whatever_the_session_time_zone(seed: Seed,
                                                                      conn: psycopg.Connection) -> None:
    """Across the 2026-03-29 DST change in Berlin '7 days' would be 167 hours: the limit is 168 h."""
    conn.execute("SET TimeZone = 'Europe/Berlin'")
    user = seed.user()["id"]
    created = datetime(2026, 3, 25, 12, 0, tzinfo=UTC)
    seed.token(user_id=user, created_at=created, expires_at=created + timedelta(hours=168))
    with pytest.raises(errors.CheckViolation) as exc:
        seed.token(user_id=user, created_at=created, expires_at=created + timedelta(hours=168, seconds=1))
    assert exc.value.diag.constraint_name == "refresh_tokens_lifetime_max_7_days_check"


UNIQUE_CASES = [
    ("users", "users_email_key", lambda s: {"email": "same@example.com"},
     lambda s: {"email": "other@example.com"}),
    ("customers", "customers_organization_id_external_id_key", lambda s: {"external_id": "crm-1"},
     # the same external_id in another organization is a different customer
     lambda s: {"external_id": "crm-1", "organization_id": s.make("organizations")["id"]}),
]


@pytest.mark.parametrize(("table", "constraint", "first", "second"), UNIQUE_CASES,
                         ids=[c[1] for c in UNIQUE_CASES])
def test_unique_constraint(seed: Seed, table: str, constraint: str, first: Any, second: Any) -> None:
    seed.make(table, **first(seed))
    with pytest.raises(errors.UniqueViolation) as exc:
        seed.make(table, **first(seed))
    assert exc.value.diag.constraint_name == constraint
    seed.make(table, **second(seed))


FK_CASES = [
    ("users", "organization_id", "users_organization_id_fkey"),
    ("customers", "organization_id", "customers_organization_id_fkey"),
    ("customer_interactions", "customer_id", "customer_interactions_customer_id_fkey"),
    ("customer_interactions", "organization_id", "customer_interactions_organization_id_fkey"),
    ("behavior_patterns", "customer_id", "behavior_patterns_customer_id_fkey"),
    ("behavior_patterns", "organization_id", "behavior_patterns_organization_id_fkey"),
    ("refresh_tokens", "user_id", "refresh_tokens_user_id_fkey"),
]


@pytest.mark.parametrize(("table", "column", "constraint"), FK_CASES, ids=[c[2] for c in FK_CASES])
def test_foreign_key_rejects_a_missing_parent(seed: Seed, table: str, column: str, constraint: str) -> None:
    with pytest.raises(errors.ForeignKeyViolation) as exc:
        seed.make(table, **{column: uuid.uuid4()})
    assert exc.value.diag.constraint_name == constraint


def test_on_delete_behaviour(seed: Seed, conn: psycopg.Connection) -> None:
    user = seed.user()
    seed.token(user_id=user["id"])
    customer = seed.customer()
    seed.interaction(customer_id=customer["id"])
    seed.pattern(customer_id=customer["id"])

    # An organization with users or customers cannot be deleted (RESTRICT).
    with pytest.raises(errors.ForeignKeyViolation) as exc:
        conn.execute("DELETE FROM organizations WHERE id = %s", (seed.org,))
    assert exc.value.diag.constraint_name in {"users_organization_id_fkey", "customers_organization_id_fkey"}

    # A user's tokens go with the user; a customer's interactions and patterns go with the customer.
    conn.execute("DELETE FROM users WHERE id = %s", (user["id"],))
    assert conn.execute("SELECT count(*) FROM refresh_tokens").fetchone() == (0,)
    conn.execute("DELETE FROM customers WHERE id = %s", (customer["id"],))
    assert conn.execute("SELECT count(*) FROM customer_interactions").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM behavior_patterns").fetchone() == (0,)
    conn.execute("DELETE FROM organizations WHERE id = %s", (seed.org,))


NOT_NULL_CASES = [(table, column) for table, columns in EXPECTED_COLUMNS.items() if table in {
    "organizations", "users", "customers", "customer_interactions", "behavior_patterns", "refresh_tokens"}
    for column, (_, not_null, _) in columns.items() if not_null]


@pytest.mark.parametrize(("table", "column"), NOT_NULL_CASES, ids=[f"{t}.{c}" for t, c in NOT_NULL_CASES])
def test_not_null(seed: Seed, table: str, column: str) -> None:
    with pytest.raises(errors.NotNullViolation) as exc:
        seed.make(table, **{column: None})
    assert (exc.value.diag.table_name, exc.value.diag.column_name) == (table, column)


@pytest.mark.parametrize("table", ["organizations", "users", "customers", "customer_interactions",
                                   "behavior_patterns", "refresh_tokens"])
def test_defaults(seed: Seed, conn: psycopg.Connection, table: str) -> None:
    with conn.transaction():
        row = seed.make(table)
        now = conn.execute("SELECT now()").fetchone()
    assert now is not None
    assert isinstance(row["id"], uuid.UUID) and row["id"].version == 4
    assert row["created_at"] == now[0]
    if "updated_at" in row:
        assert row["updated_at"] == now[0]
    assert seed.make(table)["id"] != row["id"]


@pytest.mark.parametrize(("table", "change"), [
    ("organizations", {"name": "Renamed"}),
    ("users", {"last_login_at": NOW}),
    ("customers", {"segment": "vip"}),
])
def test_updated_at_is_set_by_the_database_on_update(seed: Seed, conn: psycopg.Connection, table: str,
                                                     change: dict[str, Any]) -> None:
    long_ago = datetime(2000, 1, 1, tzinfo=UTC)
    row = seed.make(table, created_at=long_ago, updated_at=long_ago)
    assert row["updated_at"] == long_ago
    with conn.transaction():
        # Even a client that sends its own updated_at gets the database's time.
        template = sql.SQL("UPDATE {} SET {}, updated_at = %s WHERE id = %s RETURNING created_at, updated_at")
        query = template.format(sql.Identifier(table),
                                sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in change))
        updated = conn.execute(query, [*change.values(), long_ago, row["id"]]).fetchone()
        now = conn.execute("SELECT now()").fetchone()
    assert updated == (long_ago, now[0] if now else None)


def test_interaction_timestamp_cannot_be_in_the_future(seed: Seed, conn: psycopg.Connection) -> None:
    customer = seed.customer()["id"]
    future = datetime.now(UTC) + timedelta(minutes=1)
    with pytest.raises(errors.CheckViolation) as exc:
        seed.interaction(customer_id=customer, timestamp=future)
    assert exc.value.diag.constraint_name == "customer_interactions_timestamp_not_future"
    assert "in the future" in (exc.value.diag.message_primary or "")

    # Past and present are fine, on insert and on update.
    row = seed.interaction(customer_id=customer, timestamp=datetime.now(UTC) - timedelta(days=30))
    conn.execute("UPDATE customer_interactions SET \"timestamp\" = now() WHERE id = %s", (row["id"],))
    with pytest.raises(errors.CheckViolation) as exc:
        conn.execute("UPDATE customer_interactions SET \"timestamp\" = %s WHERE id = %s", (future, row["id"]))
    assert exc.value.diag.constraint_name == "customer_interactions_timestamp_not_future"
    # Updating other columns of an existing row does not re-check it.
    conn.execute("UPDATE customer_interactions SET processed_at = now() WHERE id = %s", (row["id"],))


def test_interaction_timestamp_uses_the_clock_not_the_transaction_start(seed: Seed,
                                                                         conn: psycopg.Connection) -> None:
    """An event that happened during a long ingest transaction is not 'in the future'."""
    customer = seed.customer()["id"]
    with conn.transaction():
        conn.execute("SELECT pg_sleep(0.2)")
        seed.interaction(customer_id=customer, timestamp=datetime.now(UTC) - timedelta(milliseconds=50))


# ---------------------------------------------------------------------------------------------------
# Migrations: up, down (reverse order), up leaves the identical catalog; down leaves nothing.
# ---------------------------------------------------------------------------------------------------
SNAPSHOT_QUERIES = {
    "relations": """
        SELECT c.relname, c.relkind, c.relacl::text FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace""",
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               a.attidentity, a.attgenerated, pg_get_expr(d.adbin, d.adrelid), a.attacl::text
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid AND c.relnamespace = 'public'::regnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attnum > 0 AND NOT a.attisdropped""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid), convalidated
          FROM pg_constraint WHERE connamespace = 'public'::regnamespace""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "triggers": """
        SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled FROM pg_trigger t
          JOIN pg_class c ON c.oid = t.tgrelid AND c.relnamespace = 'public'::regnamespace
         WHERE NOT t.tgisinternal""",
    "functions": """
        SELECT proname, pg_get_function_identity_arguments(oid), prokind, prosecdef, provolatile,
               proconfig::text, proacl::text, pg_get_functiondef(oid)
          FROM pg_proc WHERE pronamespace = 'public'::regnamespace""",
    "types": "SELECT typname, typtype FROM pg_type WHERE typnamespace = 'public'::regnamespace",
}


def runners_own(row: tuple[Any, ...]) -> bool:
    """A catalog row of the runner's tracking table (created on first use, kept by down scripts)."""
    return any(isinstance(v, str) and v.lstrip("_").startswith(TRACKING_TABLE) for v in row[:2])


def snapshot(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """What the migrations made in `public`, the runner's tracking table aside."""
    with psycopg.connect(dsn) as c:
        return {name: sorted((r for r in c.execute(query).fetchall() if not runners_own(r)),  # type: ignore[arg-type]
                             key=repr)
                for name, query in SNAPSHOT_QUERIES.items()}


def test_up_down_up_leaves_the_identical_catalog(fresh_db: str) -> None:
    before = snapshot(fresh_db)
    assert all(not v for v in before.values()), "a fresh database has nothing in public"
    levels = [before]
    for name in MIGRATIONS:
        up(fresh_db, [name])
        levels.append(snapshot(fresh_db))
        assert levels[-1] != levels[-2], f"{name} changed nothing"
    for i, name in reversed(list(enumerate(MIGRATIONS))):
        down(fresh_db, [name])
        assert snapshot(fresh_db) == levels[i], f"{name}.down.sql does not exactly undo {name}.sql"
    assert tracked(fresh_db) == []
    up(fresh_db, MIGRATIONS)
    assert snapshot(fresh_db) == levels[-1]
    assert tracked(fresh_db) == [m[:3] for m in MIGRATIONS]


def test_down_leaves_nothing_behind(fresh_db: str) -> None:
    up(fresh_db, MIGRATIONS)
    down(fresh_db, list(reversed(MIGRATIONS)))
    assert tracked(fresh_db) == []
    with psycopg.connect(fresh_db) as c:
        left = c.execute("""
            SELECT 'relation ' || relname FROM pg_class WHERE relnamespace = 'public'::regnamespace
            UNION ALL SELECT 'function ' || proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace
            UNION ALL SELECT 'type ' || typname FROM pg_type WHERE typnamespace = 'public'::regnamespace
            UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal""").fetchall()
    assert [r for r in left if not r[0].split()[1].lstrip("_").startswith(TRACKING_TABLE)] == []


def test_a_down_script_refuses_to_drop_what_later_migrations_depend_on(fresh_db: str) -> None:
    """Downs drop without CASCADE: undoing 003 while 004's table still references customers fails."""
    up(fresh_db, MIGRATIONS[:4])
    with pytest.raises(MigrationFailedError) as failure:
        down(fresh_db, ["003_create_customers"])
    assert failure.value.sqlstate == errors.DependentObjectsStillExist.sqlstate
    assert failure.value.filename == "003_create_customers.down.sql"
    assert tracked(fresh_db) == ["001", "002", "003", "004"]


# ---------------------------------------------------------------------------------------------------
# File conventions and lint.
# ---------------------------------------------------------------------------------------------------
def statements(path: Path) -> list[str]:
    """Top-level statements, comments stripped, upper-cased (dollar-quoted bodies stay inside theirs)."""
    out = []
    for stmt in sqlparse.parse(path.read_text()):
        text = sqlparse.format(str(stmt), strip_comments=True).strip()
        if text:
            out.append(re.sub(r"\s+", " ", text).upper())
    return out


def test_sql_directory_holds_exactly_the_migrations_and_their_downs() -> None:
    expected = {f"{m}.sql" for m in MIGRATIONS} | {f"{m}.down.sql" for m in MIGRATIONS}
    assert {p.name for p in SQL_DIR.iterdir()} == expected
    for name in expected:
        assert re.fullmatch(r"\d{3}_[a-z0-9_]+(\.down)?\.sql", name)


@pytest.mark.parametrize("path", sorted(SQL_DIR.glob("*.sql")), ids=lambda p: p.name)
def test_file_follows_the_runner_conventions(path: Path) -> None:
    # Everything here runs inside the runner's transaction: no file opts out with the header line.
    assert is_transactional(path.read_text())
    stmts = statements(path)
    assert stmts, "empty migration"
    for stmt in stmts:
        assert not re.match(r"(BEGIN|START TRANSACTION|COMMIT|END|ROLLBACK|SAVEPOINT)\b", stmt), stmt
        assert not re.match(r"CREATE (EXTENSION|SCHEMA)\b", stmt), stmt
        # Roles are per environment, granted by the Pulumi program; only PUBLIC may be named.
        assert not re.match(r"(GRANT|SET ROLE|SET SESSION AUTHORIZATION|ALTER DEFAULT PRIVILEGES)\b",
                            stmt), stmt
        assert " OWNER TO " not in stmt, stmt
        if stmt.startswith("REVOKE"):
            assert stmt.endswith("FROM PUBLIC;"), stmt
        if path.name.endswith(".down.sql"):
            assert " CASCADE" not in stmt, stmt


def squawk_binary() -> str:
    candidate = Path(sys.executable).parent / "squawk"
    found = str(candidate) if candidate.exists() else shutil.which("squawk")
    assert found, "squawk-cli is not installed (pip install squawk-cli)"
    return found


def test_squawk_passes_on_sql() -> None:
    files = sorted(str(p.relative_to(REPO)) for p in SQL_DIR.glob("*.sql"))
    proc = subprocess.run([squawk_binary(), *files], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Found 0 issues in {len(files)} files" in proc.stdout + proc.stderr


def test_squawk_config_still_catches_unsafe_migrations(tmp_path: Path) -> None:
    """The exclusions in .squawk.toml do not silence the rules that protect populated tables."""
    bad = tmp_path / "009_unsafe.sql"
    bad.write_text("CREATE INDEX users_last_name_idx ON users (last_name);\n"
                   "ALTER TABLE users ADD COLUMN nickname text NOT NULL;\n"
                   "DROP TABLE customers;\n")
    proc = subprocess.run([squawk_binary(), "--config", str(REPO / ".squawk.toml"), str(bad)],
                          cwd=tmp_path, capture_output=True, text=True, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    for rule in ("require-concurrent-index-creation", "adding-required-field", "ban-drop-table",
                 "require-lock-timeout"):
        assert rule in out, rule
