"""The wake-up gate in one sequence, for capture version 4's writers (``sql/wakeup_v1.sql``).

Hubs, listeners and stay-awake stamps go through three functions that keep
the four sequences version 3's triggers read and set ``pubsubpull_wakeup_gate``
from them; a version 4 writer reads the gate alone. Going back drops the
functions and the gate; the four sequences are as they were.
"""

from django.db import migrations

from pubsubpull.capture.triggers import sql_file


class Migration(migrations.Migration):
    dependencies = [
        ("pubsubpull", "0015_log_changes"),
    ]

    operations = [
        migrations.RunSQL(
            sql=[sql_file("wakeup_v1")],
            reverse_sql=[
                "DROP FUNCTION pubsubpull_wakeup_stay_awake()",
                "DROP FUNCTION pubsubpull_wakeup_disarm(bigint)",
                "DROP FUNCTION pubsubpull_wakeup_arm()",
                "DROP FUNCTION pubsubpull_wakeup_set_gate()",
                "DROP SEQUENCE pubsubpull_wakeup_gate",
            ],
        ),
    ]
