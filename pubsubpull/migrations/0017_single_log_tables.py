"""The audit trail's view reads capture version 4's tables of one change a row (``sql/changes_v2.sql``).

A version 4 log now has two tables: the chunks of statements of many rows,
and the changes of one-row statements, one a row, with their key and images
as plain columns (``pubsubpull.capture.statement_log``). The view gives the
latter's rows as they are, so the audit trail's lookups by object and by id
reach their btree indexes; ``pubsubpull_log_view`` leaves out several tables
at once (a dropped log's two).

Going back restores version 1 of the function and the view; it refuses while
a table of one change a row exists (version 1 would unnest it): migrate back
the migrations that publish with version 4 first.
"""

from django.db import migrations

from pubsubpull.capture.triggers import sql_file

NO_SINGLE_TABLES = """
DO $$
DECLARE
    singles text := (
        SELECT string_agg(i.inhrelid::regclass::text, ', ')
        FROM pg_inherits AS i
        JOIN pg_attribute AS a ON a.attrelid = i.inhrelid AND a.attname = 'key'
        WHERE i.inhparent = 'pubsubpull_log'::regclass AND NOT a.attisdropped
    );
BEGIN
    IF singles IS NOT NULL THEN
        RAISE EXCEPTION 'pubsubpull_log still has the tables of one change a row %: migrate '
                        'back the migrations that created them first', singles;
    END IF;
END $$
"""


class Migration(migrations.Migration):
    dependencies = [
        ("pubsubpull", "0016_wakeup_gate"),
    ]

    operations = [
        migrations.RunSQL(
            sql=[sql_file("changes_v2")],
            reverse_sql=[
                NO_SINGLE_TABLES,
                "DROP FUNCTION pubsubpull_log_view(regclass[])",
                sql_file("changes_v1"),
            ],
        ),
    ]
