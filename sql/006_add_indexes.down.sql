-- Undo 006_add_indexes. Plain DROP INDEX (quick, under lock_timeout) so it runs in the runner's transaction.
-- squawk-ignore-file require-concurrent-index-deletion
SET LOCAL lock_timeout = '5s';
DROP INDEX customer_interactions_content_fts_idx;
DROP INDEX customer_interactions_metadata_idx;
DROP INDEX customer_interactions_sentiment_label_idx;
