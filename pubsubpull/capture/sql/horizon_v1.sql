-- pubsubpull horizon, version 1: how far the change log has been pruned.
--
-- Whatever deletes change rows (the prune command, an operator in psql)
-- moves the single pubsubpull_horizon row to the newest feed position
-- (txid, id) it deleted, in the deleting transaction. The feed reads the
-- horizon in the same statement as its page, so a reader either sees the rows
-- or sees the horizon that says they are gone (410), never a silent gap.
--
-- Frozen: migration 0002 loads this file by name. A change is a new file.

CREATE OR REPLACE FUNCTION pubsubpull_move_horizon() RETURNS trigger
LANGUAGE plpgsql
AS $function$
BEGIN
    INSERT INTO pubsubpull_horizon AS h (id, txid, change_id)
    SELECT 1, d.txid, d.id
    FROM old_rows AS d
    ORDER BY d.txid DESC, d.id DESC
    LIMIT 1
    ON CONFLICT (id) DO UPDATE
        SET txid = excluded.txid, change_id = excluded.change_id
        WHERE (h.txid, h.change_id) < (excluded.txid, excluded.change_id);
    RETURN NULL;
END;
$function$;

-- Not named pubsubpull_*: those names are the capture triggers' (tools list
-- them by prefix); this one belongs to the change table itself.
CREATE TRIGGER horizon_follows_deletes
AFTER DELETE ON pubsubpull_change
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION pubsubpull_move_horizon();
