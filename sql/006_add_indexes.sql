-- 006_add_indexes: the specialised indexes (expression, GIN) on customer_interactions.
-- Built without CONCURRENTLY, inside the runner's transaction: the table is created empty by 004
-- of the same release, so the build takes milliseconds. An index added later to a populated table
-- needs a migration of its own, marked as not run in a transaction, using CREATE INDEX CONCURRENTLY.
-- squawk-ignore-file require-concurrent-index-creation
SET LOCAL lock_timeout = '5s';

-- B-tree on the JSONB extraction, for WHERE sentiment->>'label' = '...'.
CREATE INDEX customer_interactions_sentiment_label_idx
    ON customer_interactions ((sentiment ->> 'label'));

-- GIN (default jsonb_ops: serves @>, ?, ?|, ?& and jsonpath @?, @@).
CREATE INDEX customer_interactions_metadata_idx
    ON customer_interactions USING gin (metadata);

-- Full text search, English dictionary. Queries must use the same expression,
-- to_tsvector('english', content), to use it.
CREATE INDEX customer_interactions_content_fts_idx
    ON customer_interactions USING gin (to_tsvector('english', content));
