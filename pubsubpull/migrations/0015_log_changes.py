"""The audit trail reads every table of the change log: the view ``pubsubpull_log_changes``.

``sql/changes_v1.sql`` creates the view (pubsubpull_change's rows, and each
other log table's rows unnested into changes) and the function that makes it
again when a log table comes or goes. ``Change`` now reads the view: the
model is no longer managed (the table stays, written by the triggers and by
pubsubpull's own SQL, and its indexes with it). ``LogRow``, a model of the
log's parent (0014 made it), is managed instead: Django's flush empties it,
and so every log table.

Going back drops the view and the function, and gives ``Change`` its table
again; it refuses while other log tables exist (0014 says why).
"""

from django.db import migrations, models

from pubsubpull.capture.statement_log import ONLY_THE_FIRST_CHILD
from pubsubpull.capture.triggers import sql_file

_INDEXES = ["pubsubpull_change_feed", "pubsubpull_change_object", "pubsubpull_change_request"]


class Migration(migrations.Migration):
    dependencies = [
        ("pubsubpull", "0014_change_log"),
    ]

    operations = [
        migrations.RunSQL(
            sql=[sql_file("changes_v1")],
            reverse_sql=[
                ONLY_THE_FIRST_CHILD,
                "DROP VIEW pubsubpull_log_changes",
                "DROP FUNCTION pubsubpull_log_view(regclass)",
            ],
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                *(migrations.RemoveIndex("change", name) for name in _INDEXES),
                migrations.AlterModelOptions(
                    name="change", options={"managed": False, "ordering": ["id"]}
                ),
                migrations.AlterModelTable(name="change", table="pubsubpull_log_changes"),
                # The log's parent (0014), so that Django's flush empties every log table.
                migrations.CreateModel(
                    name="LogRow",
                    fields=[
                        ("id", models.BigIntegerField(primary_key=True, serialize=False)),
                        ("txid", models.BigIntegerField()),
                        ("model", models.CharField(db_collation="C", max_length=200)),
                        ("op", models.CharField(max_length=8)),
                        ("at", models.DateTimeField()),
                        ("request_id", models.UUIDField(null=True)),
                        ("rows", models.IntegerField(default=1)),
                    ],
                    options={"db_table": "pubsubpull_log", "default_permissions": ()},
                ),
            ],
        ),
    ]
