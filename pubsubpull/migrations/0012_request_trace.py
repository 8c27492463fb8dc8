"""Keep the W3C trace context of each request row, and install capture version 3.

Two columns on ``pubsubpull_request``, ``traceparent`` and ``tracestate``,
empty when the request or job had no trace (a constant default: adding them
rewrites no row). Version 3 of the capture function (``sql/capture_v3.sql``)
writes them from the context the middleware sends; it is version 2 with the
two columns added. Going back reinstalls version 2's function first, then
drops the columns.
"""

from django.db import migrations, models

from pubsubpull.capture.triggers import function_sql


class Migration(migrations.Migration):
    dependencies = [
        ("pubsubpull", "0011_subscription_whole_transactions"),
    ]

    operations = [
        migrations.AddField(
            model_name="request",
            name="traceparent",
            field=models.CharField(
                blank=True,
                db_default="",
                default="",
                help_text="The W3C traceparent of the request's trace (its valid header, or "
                "the active OpenTelemetry span's), if any.",
                max_length=55,
            ),
        ),
        migrations.AddField(
            model_name="request",
            name="tracestate",
            field=models.CharField(
                blank=True,
                db_default="",
                default="",
                help_text="The W3C tracestate that came with the traceparent, if any.",
                max_length=512,
            ),
        ),
        migrations.RunSQL(
            sql=[function_sql(3)],
            reverse_sql=[function_sql(2)],
        ),
    ]
