-- 008_create_refresh_token_cleanup: the routine a pg_cron job calls every few minutes to delete
-- expired refresh tokens, and the table recording each of its runs. Design notes and measurements:
-- docs/schema.md, "Expired refresh token cleanup".
SET LOCAL lock_timeout = '5s';

CREATE TABLE refresh_token_cleanup_runs (
    id           bigint      GENERATED ALWAYS AS IDENTITY,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    cutoff       timestamptz NOT NULL,
    batch_size   integer     NOT NULL,
    batches      integer     NOT NULL,
    rows_deleted bigint      NOT NULL,
    CONSTRAINT refresh_token_cleanup_runs_pkey PRIMARY KEY (id),
    CONSTRAINT refresh_token_cleanup_runs_counts_check
        CHECK (batch_size > 0 AND batches >= 0 AND rows_deleted >= 0)
);

-- Deletes the tokens with expires_at < cutoff (default: now() at the start of the call; a token
-- expiring exactly at the cutoff is kept until the next run) in batches of at most batch_size rows,
-- committing after each batch, and records the run (a run that fails part way records nothing; the
-- batches it committed stay deleted).
--
--   CALL delete_expired_refresh_tokens(batch_size => 5000);   -- returns (rows_deleted, batches)
--
-- A PROCEDURE (a function cannot COMMIT), SECURITY INVOKER and without a SET clause (either would
-- forbid COMMIT). The CALL must be a statement of its own outside any transaction block: a cron
-- command of exactly this one statement, or autocommit. The caller needs only SELECT (id,
-- expires_at) and DELETE on refresh_tokens and INSERT on refresh_token_cleanup_runs (no UPDATE,
-- hence no FOR UPDATE SKIP LOCKED; no table-level SELECT, hence no ctid).
--
-- Keyset batches over the refresh_tokens_expires_at_id_idx index: each batch first finds the key
-- (expires_at, id) of the first row past the batch (an index-only scan of batch_size entries),
-- then deletes the key range [previous key, that key) with one index range scan. A batch never
-- walks the index entries of rows deleted by the earlier batches (still there until VACUUM), and
-- no batch touches the primary key or the rest of the table. Because the DELETE re-checks the
-- range, a token whose expires_at is concurrently extended past the range is not deleted.
-- Statements are run with EXECUTE so that each is planned with the actual bounds.
--
-- Both statements also carry the plain-column bounds `expires_at >= lo` (and the DELETE
-- `expires_at <= hi`), implied by the row comparisons, so they select the same rows. They are
-- there for the planner: it estimates a row comparison from its first column alone and cannot
-- pair two of them into a range, so `(expires_at, id) >= lo AND (expires_at, id) < hi` was
-- estimated as P(expires_at >= lo) * P(expires_at < hi), up to a quarter of the table for a
-- 5,000-row batch. At 10 M tokens (not yet at 1 M) that made the DELETE a Seq Scan of the
-- table for every batch past the first ~20 % (1.2 s per batch; bench/README.md). A pair of plain
-- bounds on one column is estimated as a range from the histogram (~1,200-1,400 rows for a
-- 5,000-row batch, the row comparisons' factors still applying), so every batch keeps the index
-- range scan. tests/integration/test_token_cleanup.py checks the estimate.
--
-- Each batch commits with synchronous_commit = off (SET LOCAL: that batch's transaction only).
-- A crash can lose only the last few batches' deletions (at most ~3 x wal_writer_delay of
-- commits); nothing becomes inconsistent (the rows are simply still there) and the next run
-- deletes them again. The run-history INSERT commits synchronously, which also flushes every
-- batch before it: once a run is recorded, all its deletions are durable. Measured in
-- bench/README.md.
CREATE PROCEDURE delete_expired_refresh_tokens(
    batch_size   integer     DEFAULT 5000,
    cutoff       timestamptz DEFAULT NULL,
    INOUT rows_deleted bigint  DEFAULT NULL,
    INOUT batches      integer DEFAULT NULL
)
LANGUAGE plpgsql
SECURITY INVOKER
AS $$
DECLARE
    v_started_at timestamptz := clock_timestamp();
    v_cutoff     timestamptz := coalesce(cutoff, now());
    -- The batch covers keys >= (v_lo_expires, v_lo_id) and < (v_hi_expires, v_hi_id).
    v_lo_expires timestamptz := '-infinity';
    v_lo_id      uuid        := '00000000-0000-0000-0000-000000000000';
    v_hi_expires timestamptz;
    v_hi_id      uuid;
    v_last       boolean;
    v_n          bigint;
    v_batch_at   timestamptz;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be a positive integer, got %', batch_size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_cutoff > now() THEN
        RAISE EXCEPTION 'cutoff % is in the future: that would delete live tokens', v_cutoff
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    rows_deleted := 0;
    batches := 0;
    LOOP
        v_batch_at := clock_timestamp();
        -- The first key past this batch; none: this is the last batch, it ends at the cutoff.
        SET LOCAL synchronous_commit = off;
        EXECUTE 'SELECT expires_at, id FROM refresh_tokens
                  WHERE (expires_at, id) >= ($1, $2) AND expires_at >= $1 AND expires_at < $3
                  ORDER BY expires_at, id OFFSET $4 LIMIT 1'
            INTO v_hi_expires, v_hi_id
            USING v_lo_expires, v_lo_id, v_cutoff, batch_size;
        v_last := v_hi_expires IS NULL;
        IF v_last THEN
            v_hi_expires := v_cutoff;
            v_hi_id := '00000000-0000-0000-0000-000000000000';
        END IF;

        EXECUTE 'DELETE FROM refresh_tokens
                  WHERE (expires_at, id) >= ($1, $2) AND (expires_at, id) < ($3, $4)
                    AND expires_at >= $1 AND expires_at <= $3'
            USING v_lo_expires, v_lo_id, v_hi_expires, v_hi_id;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        COMMIT;
        RAISE DEBUG 'delete_expired_refresh_tokens: batch deleted % rows in % ms', v_n,
            round(extract(epoch FROM clock_timestamp() - v_batch_at) * 1000, 1);

        IF v_n > 0 THEN
            rows_deleted := rows_deleted + v_n;
            batches := batches + 1;
        END IF;
        EXIT WHEN v_last;
        v_lo_expires := v_hi_expires;
        v_lo_id := v_hi_id;
    END LOOP;

    INSERT INTO refresh_token_cleanup_runs
        (started_at, finished_at, cutoff, batch_size, batches, rows_deleted)
    VALUES (v_started_at, clock_timestamp(), v_cutoff, batch_size, batches, rows_deleted);
END
$$;

-- Only roles granted EXECUTE (the cron job's role, by the Pulumi program) may call it.
REVOKE EXECUTE ON PROCEDURE delete_expired_refresh_tokens(integer, timestamptz, bigint, integer)
    FROM PUBLIC;
