-- Undo 001_create_organizations.
-- A down script exists to drop what its up created (and is run deliberately, not on deploy):
-- squawk-ignore-file ban-drop-table, ban-drop-function
SET LOCAL lock_timeout = '5s';
DROP TABLE organizations;
DROP FUNCTION set_updated_at();
