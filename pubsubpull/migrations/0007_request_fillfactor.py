"""Leave half of each page of ``pubsubpull_request`` free for its status update.

A request row is written by the first change of its request and updated once
more, a fraction of a second later, with its status and duration (a batch of
rows at a time). With full pages that update wrote a new row version on
another page plus an entry in each of the table's three indexes; with room on
the page it is a HOT update: same page, no index entries. Measured with
batches of 80 rows, as a busy server sends them: 0% HOT at fillfactor 100, 55%
at 70, 92% at 50, for the same table size (the non-HOT versions took the
space anyway). See benchmarks/README.rst, "Request overhead".
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("pubsubpull", "0006_capture_v2"),
    ]

    operations = [
        migrations.RunSQL(
            sql="ALTER TABLE pubsubpull_request SET (fillfactor = 50)",
            reverse_sql="ALTER TABLE pubsubpull_request RESET (fillfactor)",
        ),
    ]
