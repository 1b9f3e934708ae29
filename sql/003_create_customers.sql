-- 003_create_customers: end customers of a tenant (depends on organizations).
SET LOCAL lock_timeout = '5s';

CREATE TABLE customers (
    id                uuid         NOT NULL DEFAULT gen_random_uuid(),
    organization_id   uuid         NOT NULL,
    external_id       varchar(255) NOT NULL,
    email             varchar(255),
    first_name        varchar(100),
    last_name         varchar(100),
    segment           varchar(100),
    metadata          jsonb,
    first_seen_at     timestamptz  NOT NULL,
    last_seen_at      timestamptz  NOT NULL,
    interaction_count integer,
    average_sentiment numeric(5, 4),
    created_at        timestamptz  NOT NULL DEFAULT now(),
    updated_at        timestamptz  NOT NULL DEFAULT now(),
    CONSTRAINT customers_pkey PRIMARY KEY (id),
    -- Its unique index (organization_id, external_id) is the spec's composite index AND serves the
    -- spec's "index on organization_id" (leading column): no separate organization_id index.
    CONSTRAINT customers_organization_id_external_id_key UNIQUE (organization_id, external_id),
    CONSTRAINT customers_organization_id_fkey FOREIGN KEY (organization_id)
        REFERENCES organizations (id) ON DELETE RESTRICT,
    CONSTRAINT customers_average_sentiment_range_check
        CHECK (average_sentiment BETWEEN -1 AND 1),
    CONSTRAINT customers_interaction_count_nonnegative_check
        CHECK (interaction_count >= 0)
);

CREATE INDEX customers_email_idx ON customers (email);
CREATE INDEX customers_segment_idx ON customers (segment);

CREATE TRIGGER customers_set_updated_at
    BEFORE UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
