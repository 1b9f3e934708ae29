-- 004_create_customer_interactions: customer touchpoints (depends on customers, organizations).
-- Plain B-tree indexes live here; the specialised ones (expression, GIN) are added by 006.
SET LOCAL lock_timeout = '5s';

-- "timestamp must not be in the future" cannot be a CHECK: CHECK expressions must be immutable
-- and are never re-validated, so a CHECK calling now() is not a real constraint. A BEFORE
-- INSERT OR UPDATE trigger raises instead. clock_timestamp(), not now(): now() is frozen at the
-- start of the transaction, so a long ingest transaction would reject events that really
-- happened after it began.
CREATE FUNCTION customer_interactions_reject_future_timestamp() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF NEW."timestamp" > clock_timestamp() THEN
        RAISE EXCEPTION 'customer_interactions."timestamp" % is in the future (now %)',
            NEW."timestamp", clock_timestamp()
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'customer_interactions_timestamp_not_future',
                  TABLE = 'customer_interactions',
                  COLUMN = 'timestamp';
    END IF;
    RETURN NEW;
END
$$;

CREATE TABLE customer_interactions (
    id                   uuid         NOT NULL DEFAULT gen_random_uuid(),
    customer_id          uuid         NOT NULL,
    organization_id      uuid         NOT NULL,
    "timestamp"          timestamptz  NOT NULL,
    channel              varchar(50)  NOT NULL,
    event_type           varchar(100) NOT NULL,
    content              text,
    sentiment            jsonb,
    sentiment_confidence numeric(5, 4),
    metadata             jsonb,
    processed_at         timestamptz,
    created_at           timestamptz  NOT NULL DEFAULT now(),
    CONSTRAINT customer_interactions_pkey PRIMARY KEY (id),
    CONSTRAINT customer_interactions_customer_id_fkey FOREIGN KEY (customer_id)
        REFERENCES customers (id) ON DELETE CASCADE,
    CONSTRAINT customer_interactions_organization_id_fkey FOREIGN KEY (organization_id)
        REFERENCES organizations (id) ON DELETE RESTRICT,
    CONSTRAINT customer_interactions_channel_check
        CHECK (channel IN ('web', 'mobile', 'email', 'chat', 'phone')),
    CONSTRAINT customer_interactions_sentiment_confidence_range_check
        CHECK (sentiment_confidence BETWEEN 0 AND 1)
);

-- The trigger's name is the name the error reports (CONSTRAINT above). The WHEN clause keeps the
-- common case (a past timestamp) free of any PL/pgSQL call; the function checks again on its own.
CREATE TRIGGER customer_interactions_timestamp_not_future
    BEFORE INSERT OR UPDATE OF "timestamp" ON customer_interactions
    FOR EACH ROW
    WHEN (NEW."timestamp" > clock_timestamp())
    EXECUTE FUNCTION customer_interactions_reject_future_timestamp();

CREATE INDEX customer_interactions_customer_id_idx ON customer_interactions (customer_id);
CREATE INDEX customer_interactions_organization_id_idx ON customer_interactions (organization_id);
CREATE INDEX customer_interactions_timestamp_idx ON customer_interactions ("timestamp" DESC);
CREATE INDEX customer_interactions_channel_idx ON customer_interactions (channel);
