# CloudEvents framing and v1a (ed25519) signatures per subscription; CloudEvents pulls.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("pubsubpull", "0012_request_trace"),
    ]

    operations = [
        migrations.AddField(
            model_name="pullcursor",
            name="framing",
            field=models.CharField(
                default="pubsubpull",
                help_text="How feed pages are asked for: pubsubpull's page, or a CloudEvents batch.",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="remotesubscription",
            name="public_key",
            field=models.CharField(
                blank=True,
                help_text="For a v1a subscription: the whpk_ key its notifications verify with (and then only v1a signatures are accepted).",
                max_length=100,
            ),
        ),
        migrations.AddField(
            model_name="subscription",
            name="framing",
            field=models.CharField(
                choices=[("pubsubpull", "pubsubpull"), ("cloudevents", "CloudEvents batch")],
                default="pubsubpull",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="subscription",
            name="signature",
            field=models.CharField(
                choices=[("v1", "v1 (HMAC-SHA256)"), ("v1a", "v1a (ed25519)")],
                default="v1",
                max_length=8,
            ),
        ),
        migrations.AlterField(
            model_name="remotesubscription",
            name="secret",
            field=models.CharField(blank=True, max_length=100),
        ),
    ]
