-- pubsubpull change log, version 2 of its changes view: pubsubpull_log_changes.
--
-- As version 1 (sql/changes_v1.sql), and capture v4's tables of one change
-- a row (a column key in place of the arrays keys, old and new: its one-row
-- statements, statement_log.LogTable.single) as they are: no unnesting, so
-- a filter on object_pk reaches their index of (key::text COLLATE "C"), and
-- one on row_id their index of ids. keys is the one key, as an array, so the
-- ORM's object_pk lookup (pubsubpull.capture.models) reads every table alike.
--
-- pubsubpull_log_view(leaving) makes the view again from the tables the log
-- has, less those in leaving: the migration that drops a version 4 log
-- leaves out both of its tables at once (version 1 took one table).
--
-- Frozen: migration 0017 loads this file by name. A change is a new file.

DROP FUNCTION pubsubpull_log_view(regclass);

CREATE FUNCTION pubsubpull_log_view(leaving regclass[] DEFAULT '{}') RETURNS void
LANGUAGE plpgsql
AS $function$
DECLARE
    body text := 'SELECT c.id, c.txid, c.model, c.object_pk, c.op, c.at, c.old, c.new, '
                 'c.request_id, ARRAY[c.object_pk] AS keys, '
                 'c.id AS row_id FROM pubsubpull_change AS c';
    member regclass;
    single boolean;
BEGIN
    leaving := array_remove(leaving, NULL);
    FOR member, single IN
        SELECT i.inhrelid::regclass,
               EXISTS (SELECT FROM pg_attribute AS a
                       WHERE a.attrelid = i.inhrelid AND a.attname = 'key' AND NOT a.attisdropped)
        FROM pg_inherits AS i
        WHERE i.inhparent = 'pubsubpull_log'::regclass
          AND i.inhrelid <> 'pubsubpull_change'::regclass
          AND i.inhrelid <> ALL (leaving)
        ORDER BY i.inhrelid
    LOOP
        IF single THEN
            body := body || format($member$
UNION ALL
SELECT c.id, c.txid, c.model, c.key::text COLLATE "C", c.op, c.at,
       to_jsonb(c.old), to_jsonb(c.new), c.request_id, ARRAY[c.key::text COLLATE "C"], c.id
FROM %s AS c$member$, member);
        ELSE
            body := body || format($member$
UNION ALL
SELECT c.id + u.ordinal - 1, c.txid, c.model, u.k::text COLLATE "C", c.op, c.at,
       to_jsonb(u.o), to_jsonb(u.n), c.request_id, c.keys::text[] COLLATE "C", c.id
FROM %s AS c
CROSS JOIN LATERAL (
    SELECT generate_series(1, greatest(c.rows, 1)) AS ordinal,
           unnest(c.keys) AS k, unnest(c.old) AS o, unnest(c.new) AS n
) AS u$member$, member);
        END IF;
    END LOOP;
    EXECUTE 'CREATE OR REPLACE VIEW pubsubpull_log_changes AS ' || body;
END;
$function$;

SELECT pubsubpull_log_view();
