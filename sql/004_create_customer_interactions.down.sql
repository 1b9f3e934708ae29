-- Undo 004_create_customer_interactions.
-- A down script exists to drop what its up created (and is run deliberately, not on deploy):
-- squawk-ignore-file ban-drop-table, ban-drop-function
SET LOCAL lock_timeout = '5s';
DROP TABLE customer_interactions;
DROP FUNCTION customer_interactions_reject_future_timestamp();
