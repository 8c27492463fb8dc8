-- pubsubpull capture, version 4: a log table per published model, one row per
-- statement chunk (a template: pubsubpull.capture.statement_log fills it in).
--
-- Each published model gets a composite type of its published columns, a log
-- table that is a member of pubsubpull_log (sql/log_v1.sql), and a capture
-- function of its own, its names and columns written into the SQL: no
-- argument parsing, no dynamic SQL, plans cached per connection. A statement's
-- rows are copied as values of the composite type (no JSON at write time),
-- up to {chunk} to a log row: the row's keys, and its old and new images, as
-- arrays in the same order. A log row's id comes from pubsubpull_change_id_seq,
-- which steps by {chunk}: its changes are id .. id + rows - 1.
--
-- Migrations freeze the filled-in SQL (pubsubpull.operations.Publish), so this
-- file may change without changing what an existing migration installs.
--
-- Placeholders: {function}, {log}, {image}, {label} (a quoted literal),
-- {key} (the key column, quoted), {values} (ROW values of the published
-- columns of transition row r), {writes} (which set recorded).
--
-- A statement of one row writes one row of the log's second table, of one
-- change a row (its key, old and new image as plain values; btree indexes,
-- no CHECK: statement_log.LogTable.single).
--
-- What each statement writes ({writes}):
--   INSERT: new images; DELETE: old images; the keys of the rows.
--   UPDATE: old and new images paired by position in the transition tables
--   (exact when the key changes; a join on the key would not be), no-op rows
--   dropped (an UPDATE that changed no published column is no change), the
--   new keys.
--   TRUNCATE: one row of no images, rows 0.
-- Around it, version 3's: zero rows recorded means nothing happened, the
-- request row written by the request's first change; the wake-up gate read
-- from pubsubpull_wakeup_gate (sql/wakeup_v1.sql).

CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql
AS $function$
DECLARE
    -- What each transaction sets up is what a one-row statement pays most for
    -- (issue 13): the request's id only; its context when its row is written.
    request uuid := (nullif(current_setting('pubsubpull.context', true), '')::jsonb ->> 'id')::uuid;
    context jsonb;
    user_pk pubsubpull_request.user_id%TYPE;
    recorded bigint;
    ignored text;
    saved_enable_nestloop text;  -- the UPDATE's chunked statement's (statement_log.py)
    saved_jit text;
BEGIN
{writes}
    IF recorded = 0 THEN
        RETURN NULL;  -- zero rows touched, or a no-op UPDATE: nothing happened
    END IF;

    IF request IS NOT NULL
       AND current_setting('pubsubpull.request_written', true) IS DISTINCT FROM request::text THEN
        context := current_setting('pubsubpull.context')::jsonb;
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
            coalesce((context ->> 'started')::timestamptz, statement_timestamp()),
            coalesce(context -> 'metadata', '{}'),
            coalesce(context ->> 'traceparent', ''),
            coalesce(context ->> 'tracestate', '')
        )
        ON CONFLICT (id) DO NOTHING;
        ignored := set_config('pubsubpull.request_written', request::text, true);
    END IF;

    -- The wake-up gate (sql/wakeup_v1.sql): one sequence, not version 3's four.
    IF pg_sequence_last_value('pubsubpull_wakeup_gate') > extract(epoch FROM now()) THEN
        PERFORM pg_notify('pubsubpull', {label});
    END IF;
    RETURN NULL;
END;
$function$
