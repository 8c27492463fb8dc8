"""Install version 2 of the capture function (``sql/capture_v2.sql``).

Same name and arguments, so every published table's triggers call it at once
and their fingerprints do not change; it stores the same rows with less work
per statement (see the file's header). Going back reinstalls version 1's
function, leaving the wake-up sequences as they are.
"""

from django.db import migrations

from pubsubpull.capture.triggers import function_sql


class Migration(migrations.Migration):
    dependencies = [
        ("pubsubpull", "0005_pullcursor"),
    ]

    operations = [
        migrations.RunSQL(
            sql=[function_sql(2)],
            reverse_sql=[function_sql(1, function_only=True)],
        ),
    ]
