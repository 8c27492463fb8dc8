-- pubsubpull change log, version 1 of its changes view: pubsubpull_log_changes.
--
-- One row per change of every table of the log, in pubsubpull_change's
-- columns (pubsubpull.models.Change reads it): pubsubpull_change's rows as
-- they are, and each other table's rows (capture v4's, many changes each)
-- unnested into their changes, images as jsonb. The column keys is what an
-- object's changes are found by in such a table, its GIN index of
-- (keys::text[] COLLATE "C"): a row's keys, every key of the chunk for the
-- other tables (collation "C", as object_pk's, and as the index's).
-- A filter on object_pk alone cannot reach that index (the key is known only
-- once the row is unnested), so the ORM's object_pk lookup also tests keys
-- (pubsubpull.capture.models). Do not select keys per change: for the other
-- tables it is the whole chunk's keys, made again for each change. Likewise
-- row_id, the id of the row holding the change, for the index of ids: the
-- ORM's id lookup also asks for row_id within the 1,024 ids before it.
--
-- pubsubpull_log_view() makes the view again from the tables the log has;
-- the migration that creates a log table calls it, and one that drops a log
-- table calls pubsubpull_log_view(that table) first.
--
-- Frozen: migration 0015 loads this file by name. A change is a new file.

CREATE OR REPLACE FUNCTION pubsubpull_log_view(leaving regclass DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
AS $function$
DECLARE
    body text := 'SELECT c.id, c.txid, c.model, c.object_pk, c.op, c.at, c.old, c.new, '
                 'c.request_id, ARRAY[c.object_pk] AS keys, '
                 'c.id AS row_id FROM pubsubpull_change AS c';
    member regclass;
BEGIN
    FOR member IN
        SELECT i.inhrelid::regclass FROM pg_inherits AS i
        WHERE i.inhparent = 'pubsubpull_log'::regclass
          AND i.inhrelid <> 'pubsubpull_change'::regclass
          AND i.inhrelid IS DISTINCT FROM leaving
        ORDER BY i.inhrelid
    LOOP
        body := body || format($member$
UNION ALL
SELECT c.id + u.ordinal - 1, c.txid, c.model, u.k::text COLLATE "C", c.op, c.at,
       to_jsonb(u.o), to_jsonb(u.n), c.request_id, c.keys::text[] COLLATE "C", c.id
FROM %s AS c
CROSS JOIN LATERAL (
    SELECT generate_series(1, greatest(c.rows, 1)) AS ordinal,
           unnest(c.keys) AS k, unnest(c.old) AS o, unnest(c.new) AS n
) AS u$member$, member);
    END LOOP;
    EXECUTE 'CREATE OR REPLACE VIEW pubsubpull_log_changes AS ' || body;
END;
$function$;

SELECT pubsubpull_log_view();
