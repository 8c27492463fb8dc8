"""Make the change log a family of tables: ``pubsubpull_log`` and its children.

``sql/log_v1.sql`` creates ``pubsubpull_log``, a parent table that holds no
row itself, and makes ``pubsubpull_change`` its first child (with a ``rows``
column, 1 on every existing row: a constant default rewrites nothing). Every
change recorded so far stays where it is, and capture goes on writing there.
Readers that need only where changes are (the feed's bounds, backlogs,
request positions, retention) read the parent, so a log table of another
shape, whose rows hold many changes each, can join the family later.

Going back puts version 1 of the horizon function back, detaches
``pubsubpull_change`` and drops the parent and the column; it refuses while
another table still belongs to the log (the migration that made it goes
back first).
"""

from django.db import migrations

from pubsubpull.capture.statement_log import ONLY_THE_FIRST_CHILD
from pubsubpull.capture.triggers import sql_file


class Migration(migrations.Migration):
    dependencies = [
        ("pubsubpull", "0013_subscription_framing"),
    ]

    operations = [
        migrations.RunSQL(
            sql=[sql_file("log_v1")],
            reverse_sql=[
                ONLY_THE_FIRST_CHILD,
                sql_file("horizon_v1", function_only=True).split("\n-- Not named")[0],
                "DROP TRIGGER horizon_follows_deletes ON pubsubpull_log",
                "ALTER TABLE pubsubpull_change NO INHERIT pubsubpull_log",
                "DROP TABLE pubsubpull_log",
                "ALTER TABLE pubsubpull_change DROP COLUMN rows",
            ],
        ),
    ]
