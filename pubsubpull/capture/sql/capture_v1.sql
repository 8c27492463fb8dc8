-- pubsubpull capture function, version 1.
--
-- One generic statement-level trigger function. Each published table gets four
-- triggers (insert, update, delete, truncate) that call it with arguments:
--   TG_ARGV[0]  the model label, e.g. 'shop.customer'
--   TG_ARGV[1]  the primary key column
--   TG_ARGV[2:] columns that must never be stored (removed before writing)
--
-- Frozen: migrations load this file by name. A change to the function is a
-- new file (capture_v2.sql) and a new migration, never an edit of this one.

-- Wake-ups: listeners that are about to sleep take a number from "armed"
-- and stamp "armed_at" (epoch seconds); a listener woken by a NOTIFY moves
-- "disarmed" up to the numbers its sleepers took. Writers notify only while
-- armed > disarmed and the last arm is under 30 s old (sleepers re-arm every
-- few seconds; an arm left by a process that died expires). A worker that
-- listens all the time (pubsubpull_worker) stamps "always_at" instead, every
-- few seconds: writers notify while that stamp is under 30 s old. Sequences
-- are read outside MVCC, so a writer sees an arm at once whatever its
-- isolation.
CREATE SEQUENCE IF NOT EXISTS pubsubpull_wakeup_always_at;
CREATE SEQUENCE IF NOT EXISTS pubsubpull_wakeup_armed;
CREATE SEQUENCE IF NOT EXISTS pubsubpull_wakeup_armed_at;
CREATE SEQUENCE IF NOT EXISTS pubsubpull_wakeup_disarmed;
SELECT setval('pubsubpull_wakeup_always_at', 1), setval('pubsubpull_wakeup_armed', 1),
       setval('pubsubpull_wakeup_armed_at', 1), setval('pubsubpull_wakeup_disarmed', 1);

CREATE OR REPLACE FUNCTION pubsubpull_capture() RETURNS trigger
LANGUAGE plpgsql
-- The planner has no statistics on transition tables, and a plan cached for a
-- connection's first 1-row UPDATE turned a later 20,000-row UPDATE into a
-- 116 s nested loop. Hash/merge joins and no JIT are right for every size.
SET enable_nestloop = off
SET jit = off
AS $function$
DECLARE
    model_label text := TG_ARGV[0];
    pk_column text := TG_ARGV[1];
    excluded text[] := TG_ARGV[2:];
    -- jsonb - text[] rebuilds the whole value even when the array is empty:
    -- skipping it cut the capture's CPU time by about a sixth.
    everything boolean := coalesce(cardinality(excluded), 0) = 0;
    xid bigint := pg_current_xact_id()::text::bigint;
    happened timestamptz := statement_timestamp();
    -- Set per statement by pubsubpull.context / the request middleware with
    -- set_config(..., true); missing_ok avoids an EXCEPTION block (a
    -- subtransaction) when nothing set it.
    context text := nullif(current_setting('pubsubpull.context', true), '');
    request uuid;
    recorded bigint;
BEGIN
    request := (context::jsonb ->> 'id')::uuid;

    IF TG_OP = 'INSERT' THEN
        INSERT INTO pubsubpull_change (txid, model, object_pk, op, at, request_id, old, new)
        SELECT xid, model_label, j ->> pk_column, 'insert', happened, request, NULL, j
        FROM (
            SELECT CASE WHEN everything THEN to_jsonb(r) ELSE to_jsonb(r) - excluded END AS j
            FROM new_rows AS r
        ) AS s;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Old and new transition rows are written side by side, one pair per
        -- updated row, so their positions pair them even when the UPDATE
        -- changed the primary key (a join on the key would not).
        INSERT INTO pubsubpull_change (txid, model, object_pk, op, at, request_id, old, new)
        SELECT xid, model_label, n.j ->> pk_column, 'update', happened, request, o.j, n.j
        FROM (
            SELECT row_number() OVER () AS i,
                   CASE WHEN everything THEN to_jsonb(r) ELSE to_jsonb(r) - excluded END AS j
            FROM old_rows AS r
        ) AS o
        JOIN (
            SELECT row_number() OVER () AS i,
                   CASE WHEN everything THEN to_jsonb(r) ELSE to_jsonb(r) - excluded END AS j
            FROM new_rows AS r
        ) AS n USING (i)
        WHERE o.j IS DISTINCT FROM n.j;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO pubsubpull_change (txid, model, object_pk, op, at, request_id, old, new)
        SELECT xid, model_label, j ->> pk_column, 'delete', happened, request, j, NULL
        FROM (
            SELECT CASE WHEN everything THEN to_jsonb(r) ELSE to_jsonb(r) - excluded END AS j
            FROM old_rows AS r
        ) AS s;
    ELSE
        INSERT INTO pubsubpull_change (txid, model, object_pk, op, at, request_id, old, new)
        VALUES (xid, model_label, NULL, 'truncate', happened, request, NULL, NULL);
    END IF;

    GET DIAGNOSTICS recorded = ROW_COUNT;
    IF recorded = 0 THEN
        RETURN NULL;  -- zero rows touched, or a no-op UPDATE: nothing happened
    END IF;

    -- The request row is written by the first change of the request, in that
    -- change's transaction: read-only requests cost no write, and a
    -- rolled-back change takes its request row with it. The marker is
    -- transaction-local, so a savepoint rollback forgets it too.
    IF request IS NOT NULL
       AND current_setting('pubsubpull.request_written', true) IS DISTINCT FROM request::text THEN
        INSERT INTO pubsubpull_request
        SELECT * FROM jsonb_populate_record(
            NULL::pubsubpull_request,
            jsonb_build_object(
                'method', '', 'path', '', 'query_string', '', 'user_agent', '',
                'request_id', '', 'metadata', '{}'::jsonb, 'started', happened
            ) || context::jsonb
        )
        ON CONFLICT (id) DO NOTHING;
        PERFORM set_config('pubsubpull.request_written', request::text, true);
    END IF;

    -- Tell listeners, but only while one sleeps: a NOTIFY holds a
    -- cluster-wide lock from pre-commit until the commit is flushed, so
    -- notifying writers cannot share WAL flushes (single-row commits ran at
    -- 55-60% of their speed without capture with it, 85% without).
    -- Identical notifications are folded into one per transaction.
    IF (SELECT last_value FROM pubsubpull_wakeup_always_at) > extract(epoch FROM now()) - 30
       OR ((SELECT last_value FROM pubsubpull_wakeup_armed)
               > (SELECT last_value FROM pubsubpull_wakeup_disarmed)
           AND (SELECT last_value FROM pubsubpull_wakeup_armed_at)
               > extract(epoch FROM now()) - 30) THEN
        PERFORM pg_notify('pubsubpull', model_label);
    END IF;
    RETURN NULL;
END;
$function$;
