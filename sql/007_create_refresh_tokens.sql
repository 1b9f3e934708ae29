-- 007_create_refresh_tokens: JWT refresh tokens (depends on users).
SET LOCAL lock_timeout = '5s';

CREATE TABLE refresh_tokens (
    id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    user_id    uuid        NOT NULL,
    token      text        NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT refresh_tokens_pkey PRIMARY KEY (id),
    -- A user's tokens go with the user.
    CONSTRAINT refresh_tokens_user_id_fkey FOREIGN KEY (user_id)
        REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT refresh_tokens_expires_after_created_check
        CHECK (expires_at > created_at),
    -- "Tokens expire after 7 days": 168 hours, not '7 days'. Adding days to a timestamptz depends on
    -- the session's TimeZone (a DST change makes a day 23 or 25 hours), which would make this
    -- CHECK's verdict depend on the client; hours are absolute.
    CONSTRAINT refresh_tokens_lifetime_max_7_days_check
        CHECK (expires_at <= created_at + interval '168 hours')
);

CREATE INDEX refresh_tokens_user_id_idx ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_token_idx ON refresh_tokens (token);
-- Not in the spec's list; needed by its "expired tokens should be cleaned up periodically": the
-- cleanup (008) walks expired tokens in (expires_at, id) order, keyset-batched on this key.
CREATE INDEX refresh_tokens_expires_at_id_idx ON refresh_tokens (expires_at, id);
