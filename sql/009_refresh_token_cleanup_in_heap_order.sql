-- 009_refresh_token_cleanup_in_heap_order: a large backlog of expired tokens scattered over the
-- heap is deleted in physical (heap page) order instead of index order. Measurements and the
-- reasoning: bench/README.md, "Round 3"; docs/schema.md, "Expired refresh token cleanup".
SET LOCAL lock_timeout = '5s';

-- Deletes the tokens with expires_at < cutoff on heap pages [first_page, first_page + page_count):
-- one TID Range Scan of those pages, whatever the order of expires_at on them. Returns the rows
-- deleted. Called by delete_expired_refresh_tokens once per batch, between its COMMITs.
--
-- SECURITY DEFINER because a WHERE on ctid needs SELECT on the ctid column (a column grant,
-- `GRANT SELECT (ctid)`, would do; 008's note that it takes table-level SELECT is wrong), which
-- the cron job's role does not have: its grants stay as they are (SELECT (id, expires_at) and
-- DELETE on refresh_tokens, INSERT on the run history, EXECUTE on the procedure). A procedure
-- that commits cannot be SECURITY DEFINER, so the definer's rights are confined to this one
-- statement, and the procedure stays SECURITY INVOKER.
-- It can only be used by a session whose login role could already delete those rows itself:
-- one holding DELETE on refresh_tokens (which alone allows deleting every row) and EXECUTE on
-- delete_expired_refresh_tokens. It checks session_user, the only role a SECURITY DEFINER
-- function can see besides its owner: pg_cron runs a job as a session of the job's role. It
-- returns a count only, never a ctid or a row. The fixed search_path keeps the caller's schemas
-- (and pg_temp, searched first otherwise) out of the statement.
CREATE FUNCTION delete_expired_refresh_tokens_in_pages(
    first_page bigint,
    page_count integer,
    cutoff     timestamptz
)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    v_n bigint;
BEGIN
    IF NOT (has_table_privilege(session_user, 'public.refresh_tokens', 'DELETE')
            AND has_function_privilege(session_user,
                'public.delete_expired_refresh_tokens(integer, timestamptz, bigint, integer)', 'EXECUTE'))
    THEN
        RAISE EXCEPTION 'permission denied for function delete_expired_refresh_tokens_in_pages'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'It deletes for CALL delete_expired_refresh_tokens(...): the session''s login '
                         'role needs EXECUTE on that procedure and DELETE on refresh_tokens.';
    END IF;
    IF first_page IS NULL OR first_page < 0 OR page_count IS NULL OR page_count < 1 THEN
        RAISE EXCEPTION 'first_page must be >= 0 and page_count >= 1, got % and %', first_page, page_count
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cutoff IS NULL OR cutoff > now() THEN
        RAISE EXCEPTION 'cutoff % is missing or in the future: that would delete live tokens', cutoff
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE 'DELETE FROM public.refresh_tokens
              WHERE ctid >= $1 AND ctid < $2 AND expires_at < $3'
        USING format('(%s,0)', first_page)::tid, format('(%s,0)', first_page + page_count)::tid, cutoff;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;

-- Same interface, grants and run history as 008 (CREATE OR REPLACE keeps the EXECUTE grants).
-- New: before deleting, it chooses the order.
--
-- * Heap order, when the backlog is large and scattered: the statistics say expires_at is not
--   laid out in heap order (|pg_stats.correlation| < 0.95, readable with SELECT (expires_at))
--   and at least as many tokens have expired as the table has heap pages (counted, up to that
--   number, with an index-only scan). Deleting them in index order would then visit about one
--   scattered heap page per row (each page ~once per expired row on it, in random order, and the
--   keyset SELECT fetches them too): 4x a plain DELETE at 1 M tokens, 11-13x at 10 M. In heap
--   order every page is visited once, sequentially, as by a plain DELETE. Each batch covers the
--   pages that hold about batch_size rows (pg_class.reltuples / relpages), expired or not, so a
--   batch's work is bounded by batch_size as before; it deletes at most that many rows, typically
--   fewer (the expired share). Pages appended during the run are covered too (the page count is
--   re-read every batch).
-- * Index order (008's keyset batches, unchanged), otherwise: a small backlog (the usual case
--   when the job runs every few minutes) touches only its own rows' pages instead of the whole
--   heap, and rows laid out in expiry order are deleted page after page anyway. With no
--   statistics yet (never analyzed) it also keeps the index order.
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
    -- Heap order.
    v_relpages    bigint;
    v_reltuples   double precision;
    v_correlation real;
    v_expired     bigint;
    v_page        bigint := 0;
    v_step        integer;
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

    SELECT c.relpages, c.reltuples INTO v_relpages, v_reltuples
      FROM pg_class c WHERE c.oid = 'refresh_tokens'::regclass;
    SELECT s.correlation INTO v_correlation
      FROM pg_stats s
     WHERE s.schemaname = 'public' AND s.tablename = 'refresh_tokens' AND s.attname = 'expires_at';
    IF abs(v_correlation) < 0.95 AND v_relpages > 0 AND v_reltuples > 0 THEN
        EXECUTE 'SELECT count(*) FROM (SELECT FROM refresh_tokens WHERE expires_at < $1 LIMIT $2) s'
            INTO v_expired
            USING v_cutoff, v_relpages;
        IF v_expired >= v_relpages THEN
            v_step := greatest(1, least(v_relpages, floor(batch_size * v_relpages / v_reltuples)))::integer;
        END IF;
    END IF;
    COMMIT;  -- the choice is not part of the first batch's transaction
    RAISE DEBUG 'delete_expired_refresh_tokens: % (correlation %, % heap pages, % tuples, expired >= %)',
        CASE WHEN v_step IS NULL THEN 'index order' ELSE format('heap order, %s pages per batch', v_step) END,
        v_correlation, v_relpages, v_reltuples, v_expired;

    IF v_step IS NOT NULL THEN
        -- The table's current length, re-read each batch (rows inserted meanwhile are appended).
        WHILE v_page < pg_relation_size('refresh_tokens'::regclass) / current_setting('block_size')::bigint LOOP
            v_batch_at := clock_timestamp();
            SET LOCAL synchronous_commit = off;
            v_n := delete_expired_refresh_tokens_in_pages(v_page, v_step, v_cutoff);
            COMMIT;
            RAISE DEBUG 'delete_expired_refresh_tokens: batch deleted % rows in % ms', v_n,
                round(extract(epoch FROM clock_timestamp() - v_batch_at) * 1000, 1);
            IF v_n > 0 THEN
                rows_deleted := rows_deleted + v_n;
                batches := batches + 1;
            END IF;
            v_page := v_page + v_step;
        END LOOP;
    ELSE
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
    END IF;

    INSERT INTO refresh_token_cleanup_runs
        (started_at, finished_at, cutoff, batch_size, batches, rows_deleted)
    VALUES (v_started_at, clock_timestamp(), v_cutoff, batch_size, batches, rows_deleted);
END
$$;
