-- 002_create_users: platform users (depends on organizations).
SET LOCAL lock_timeout = '5s';

CREATE TABLE users (
    id              uuid         NOT NULL DEFAULT gen_random_uuid(),
    email           varchar(255) NOT NULL,
    password_hash   varchar(255) NOT NULL,
    first_name      varchar(100) NOT NULL,
    last_name       varchar(100) NOT NULL,
    role            varchar(50)  NOT NULL,
    permissions     jsonb,
    organization_id uuid         NOT NULL,
    created_at      timestamptz  NOT NULL DEFAULT now(),
    updated_at      timestamptz  NOT NULL DEFAULT now(),
    last_login_at   timestamptz,
    CONSTRAINT users_pkey PRIMARY KEY (id),
    -- Its unique index is also the spec's "index on email": no second index.
    CONSTRAINT users_email_key UNIQUE (email),
    CONSTRAINT users_organization_id_fkey FOREIGN KEY (organization_id)
        REFERENCES organizations (id) ON DELETE RESTRICT,
    CONSTRAINT users_role_check CHECK (role IN ('admin', 'analyst', 'viewer')),
    -- bcrypt, 10 rounds: $2a$/$2b$/$2y$, cost 10, then 22 chars of salt + 31 of hash in bcrypt's base64.
    CONSTRAINT users_password_hash_bcrypt_10_check
        CHECK (password_hash ~ '^\$2[aby]\$10\$[./A-Za-z0-9]{53}$')
);

CREATE INDEX users_organization_id_idx ON users (organization_id);

CREATE TRIGGER users_set_updated_at
    BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
