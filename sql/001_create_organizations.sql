-- 001_create_organizations: tenant table, plus the updated_at trigger function every table with
-- an updated_at column uses (002 users, 003 customers).
SET LOCAL lock_timeout = '5s';

CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- The database, not the client, owns updated_at: any UPDATE stamps the transaction time.
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TABLE organizations (
    id         uuid         NOT NULL DEFAULT gen_random_uuid(),
    name       varchar(255) NOT NULL,
    created_at timestamptz  NOT NULL DEFAULT now(),
    updated_at timestamptz  NOT NULL DEFAULT now(),
    CONSTRAINT organizations_pkey PRIMARY KEY (id)
);

CREATE TRIGGER organizations_set_updated_at
    BEFORE UPDATE ON organizations
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
