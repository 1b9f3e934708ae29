-- Undo 002_create_users.
-- A down script exists to drop what its up created (and is run deliberately, not on deploy):
-- squawk-ignore-file ban-drop-table
SET LOCAL lock_timeout = '5s';
DROP TABLE users;
