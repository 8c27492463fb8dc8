-- pubsubpull wake-up gate, version 1: one sequence a writer reads.
--
-- Writers of capture versions 1 to 3 decide whether to NOTIFY from four
-- sequences (the end of sql/capture_v1.sql): always_at, armed, disarmed and
-- armed_at. Each is a relation the writer's transaction opens and locks:
-- callgrind puts their reads at about 24,000 instructions of a one-row
-- INSERT transaction (issue 13). pubsubpull_wakeup_gate holds what they
-- decide, the second (epoch) until which writers notify, so a writer of
-- capture version 4 reads one sequence: it notifies while
-- pg_sequence_last_value('pubsubpull_wakeup_gate') > extract(epoch FROM now()).
--
-- The four sequences stay the record (version 3's triggers read them); the
-- three functions below change them and then set the gate from them, all
-- under one advisory lock, so a disarm that read the sequences before
-- another process's arm cannot close the gate that arm opened.
--
-- Frozen: migration 0016 loads this file by name. A change is a new file.

CREATE SEQUENCE pubsubpull_wakeup_gate MINVALUE 0 START 0;

-- The gate from the four sequences: open until 30 s after the last stay-awake
-- stamp, or after the last arm while an arm is not yet disarmed. The caller
-- holds the lock.
CREATE FUNCTION pubsubpull_wakeup_set_gate() RETURNS bigint
LANGUAGE sql
AS $function$
    SELECT setval('pubsubpull_wakeup_gate', greatest(
        coalesce(pg_sequence_last_value('pubsubpull_wakeup_always_at') + 30, 0),
        CASE WHEN pg_sequence_last_value('pubsubpull_wakeup_armed')
                  > coalesce(pg_sequence_last_value('pubsubpull_wakeup_disarmed'), 1)
             THEN coalesce(pg_sequence_last_value('pubsubpull_wakeup_armed_at') + 30, 0)
             ELSE 0 END))
$function$;

-- A hub arms before its waiters sleep: its number, and the first transaction
-- id after the gate opened (a writer below it may have read the gate closed;
-- the hub reads until the fence passes it).
CREATE FUNCTION pubsubpull_wakeup_arm(OUT number bigint, OUT xmax bigint)
LANGUAGE plpgsql
AS $function$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pubsubpull_wakeup_gate'));
    number := nextval('pubsubpull_wakeup_armed');
    PERFORM setval('pubsubpull_wakeup_armed_at', extract(epoch FROM now())::bigint);
    PERFORM pubsubpull_wakeup_set_gate();
    xmax := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
END;
$function$;

-- A listener that received a notification: the arms up to n are spent.
CREATE FUNCTION pubsubpull_wakeup_disarm(n bigint) RETURNS void
LANGUAGE plpgsql
AS $function$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pubsubpull_wakeup_gate'));
    IF n > (SELECT last_value FROM pubsubpull_wakeup_disarmed) THEN
        PERFORM setval('pubsubpull_wakeup_disarmed', n);
    END IF;
    PERFORM pubsubpull_wakeup_set_gate();
END;
$function$;

-- A process that listens all the time stamps this every few seconds.
CREATE FUNCTION pubsubpull_wakeup_stay_awake() RETURNS void
LANGUAGE plpgsql
AS $function$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pubsubpull_wakeup_gate'));
    PERFORM setval('pubsubpull_wakeup_always_at', extract(epoch FROM now())::bigint);
    PERFORM pubsubpull_wakeup_set_gate();
END;
$function$;

-- As the four sequences stand now.
SELECT pubsubpull_wakeup_set_gate();
