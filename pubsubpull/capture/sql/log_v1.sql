-- pubsubpull change log, version 1: one log over many tables.
--
-- pubsubpull_log holds no row of its own (its CHECK (false) is not
-- inherited): its child tables do, and a query of pubsubpull_log reads them
-- all. pubsubpull_change, where capture versions 1 to 3 write one row per
-- change, is its first child. Further children may hold many changes in one
-- row, at most 1,024: a row's changes have the ids id, id + 1, ... id + rows
-- - 1 (a TRUNCATE's row, rows = 0, is one change, id), and no other row's id
-- falls in that range. pubsubpull_change's rows are one change each (rows = 1).
--
-- What needs only where the changes are, not what they hold, reads
-- pubsubpull_log (its children's (txid, id) indexes merge in feed order):
-- the feed's bounds, pending and backlog checks, request positions,
-- retention. Deleting through pubsubpull_log deletes from every child.
--
-- Frozen: migration 0014 loads this file by name. A change is a new file.

CREATE TABLE pubsubpull_log (
    id bigint NOT NULL,
    txid bigint NOT NULL,
    model varchar(200) COLLATE "C" NOT NULL,
    op varchar(8) NOT NULL,
    at timestamptz NOT NULL,
    request_id uuid,
    rows integer NOT NULL DEFAULT 1,
    -- Nothing can be written to the parent itself (plans still scan it: an
    -- empty table, no cost to speak of).
    CONSTRAINT pubsubpull_log_holds_no_rows CHECK (false) NO INHERIT
);

-- A constant default: no row is rewritten.
ALTER TABLE pubsubpull_change ADD COLUMN rows integer NOT NULL DEFAULT 1;
ALTER TABLE pubsubpull_change INHERIT pubsubpull_log;

-- Horizon, version 2: the newest change a deleted row held (the last of its
-- changes), for a delete of any log table. horizon_v1.sql's function read
-- the row's id only, the same for a row of one change.
CREATE OR REPLACE FUNCTION pubsubpull_move_horizon() RETURNS trigger
LANGUAGE plpgsql
AS $function$
BEGIN
    INSERT INTO pubsubpull_horizon AS h (id, txid, change_id)
    SELECT 1, d.txid, d.id + greatest(d.rows, 1) - 1
    FROM old_rows AS d
    ORDER BY d.txid DESC, d.id DESC
    LIMIT 1
    ON CONFLICT (id) DO UPDATE
        SET txid = excluded.txid, change_id = excluded.change_id
        WHERE (h.txid, h.change_id) < (excluded.txid, excluded.change_id);
    RETURN NULL;
END;
$function$;

-- A statement's triggers are its target table's: a DELETE of pubsubpull_log
-- fires this one (and sees every child's deleted rows), a DELETE of one
-- child that child's own (pubsubpull_change keeps horizon_follows_deletes).
CREATE TRIGGER horizon_follows_deletes
AFTER DELETE ON pubsubpull_log
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION pubsubpull_move_horizon();
