-- pubsubpull capture function, version 3.
--
-- One generic statement-level trigger function. Each published table gets four
-- triggers (insert, update, delete, truncate) that call it with arguments:
--   TG_ARGV[0]  the model label, e.g. 'shop.customer'
--   TG_ARGV[1]  the primary key column
--   TG_ARGV[2:] columns that must never be stored (removed before writing)
--
-- Frozen: migration 0012 loads this file by name. A change to the function is
-- a new file (capture_v4.sql) and a new migration, never an edit of this one.
--
-- What changed from version 2: the request row also gets the context's
-- 'traceparent' and 'tracestate' (the W3C trace context of the request or
-- job, validated by pubsubpull before it is sent; empty when absent). Nothing
-- else: the change rows, the wake-up and the plan settings are version 2's.
--
-- The wake-up sequences (pubsubpull_wakeup_*) and how listeners use them are
-- in capture_v1.sql; they are left as they are here: resetting them would
-- strand sleepers that armed.

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
    -- subtransaction) when nothing set it. Parsed once: it is read again for
    -- the request row.
    context jsonb := nullif(current_setting('pubsubpull.context', true), '')::jsonb;
    request uuid := (context ->> 'id')::uuid;
    -- The project's AUTH_USER_MODEL primary key type, whatever it is.
    user_pk pubsubpull_request.user_id%TYPE;
    recorded bigint;
    ignored text;
BEGIN
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
        -- Column by column: jsonb_populate_record() of the whole context
        -- looked up every column's input function on every call. The user's
        -- key is converted by assignment to a variable of the column's type.
        -- Keys the context leaves out get the columns' defaults, as before.
        user_pk := context ->> 'user_id';
        INSERT INTO pubsubpull_request
            (id, user_id, method, path, query_string, remote_addr, user_agent, request_id,
             started, metadata, traceparent, tracestate)
        VALUES (
            request,
            user_pk,
            coalesce(context ->> 'method', ''),
            coalesce(context ->> 'path', ''),
            coalesce(context ->> 'query_string', ''),
            (context ->> 'remote_addr')::inet,
            coalesce(context ->> 'user_agent', ''),
            coalesce(context ->> 'request_id', ''),
            coalesce((context ->> 'started')::timestamptz, happened),
            coalesce(context -> 'metadata', '{}'),
            coalesce(context ->> 'traceparent', ''),
            coalesce(context ->> 'tracestate', '')
        )
        ON CONFLICT (id) DO NOTHING;
        -- An assignment, not PERFORM: a plain expression runs without a query.
        ignored := set_config('pubsubpull.request_written', request::text, true);
    END IF;

    -- Tell listeners, but only while one sleeps: a NOTIFY holds a
    -- cluster-wide lock from pre-commit until the commit is flushed, so
    -- notifying writers cannot share WAL flushes (single-row commits ran at
    -- 55-60% of their speed without capture with it, 85% without).
    -- Identical notifications are folded into one per transaction.
    -- pg_sequence_last_value() in a plain expression (no query, no scan of
    -- four relations) took a tenth off the trigger's time. It is NULL for a
    -- sequence that was never advanced, where "SELECT last_value" read its
    -- start value, 1: the same answer, except for "disarmed", hence coalesce.
    IF pg_sequence_last_value('pubsubpull_wakeup_always_at') > extract(epoch FROM now()) - 30
       OR (pg_sequence_last_value('pubsubpull_wakeup_armed')
               > coalesce(pg_sequence_last_value('pubsubpull_wakeup_disarmed'), 1)
           AND pg_sequence_last_value('pubsubpull_wakeup_armed_at')
               > extract(epoch FROM now()) - 30) THEN
        PERFORM pg_notify('pubsubpull', model_label);
    END IF;
    RETURN NULL;
END;
$function$;
