-- Undo 008_create_refresh_token_cleanup.
-- A down script exists to drop what its up created (and is run deliberately, not on deploy):
-- squawk-ignore-file ban-drop-table, ban-drop-function
SET LOCAL lock_timeout = '5s';
DROP PROCEDURE delete_expired_refresh_tokens(integer, timestamptz, bigint, integer);
DROP TABLE refresh_token_cleanup_runs;
