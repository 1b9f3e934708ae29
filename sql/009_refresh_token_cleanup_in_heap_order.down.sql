-- Undo 009_refresh_token_cleanup_in_heap_order: 008's procedure again (index order only, its text
-- verbatim; CREATE OR REPLACE keeps the EXECUTE grants), then drop the heap-order helper.
-- A down script exists to drop what its up created (and is run deliberately, not on deploy):
-- squawk-ignore-file ban-drop-function
SET LOCAL lock_timeout = '5s';

CREATE OR REPLACE PROCEDURE delete_expired_refresh_tokens(
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

DROP FUNCTION delete_expired_refresh_tokens_in_pages(bigint, integer, timestamptz);
