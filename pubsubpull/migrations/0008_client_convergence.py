"""Mirrors and pulls converge: snapshot marks, parked events, owners of remote subscriptions.

- MirrorSeen: the keys a snapshot in progress wrote (its last page deletes the rest).
- MirrorTombstone.at: tombstones are pruned after MIRROR_TOMBSTONE_RETENTION.
- PullCursor: the ``blocked`` state and ``park_failures``; ParkedEvent.
- RemoteSubscription.owner: two tokens may each have a subscription of one name
  at one publisher; each keeps its own secret.
"""

import hashlib

import django.db.models.deletion
from django.db import migrations, models


def fill_owners(apps, schema_editor):
    RemoteSubscription = apps.get_model("pubsubpull", "RemoteSubscription")
    for record in RemoteSubscription.objects.exclude(token=""):
        record.owner = "token:" + hashlib.sha256(record.token.encode()).hexdigest()[:16]
        record.save(update_fields=["owner"])
    _flush_deferred(schema_editor)


def _flush_deferred(schema_editor):
    # Updated or deleted rows queue the deferred foreign key checks of
    # ReceivedBatch; the ALTER TABLE that follows refuses to run with them pending.
    schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def keep_one_per_name(apps, schema_editor):
    """Backwards: one subscription per publisher and name again (the newest)."""
    RemoteSubscription = apps.get_model("pubsubpull", "RemoteSubscription")
    seen = set()
    for record in RemoteSubscription.objects.order_by("-created", "-id"):
        if (record.publisher, record.name) in seen:
            record.delete()
        seen.add((record.publisher, record.name))
    _flush_deferred(schema_editor)


class Migration(migrations.Migration):
    dependencies = [
        ("pubsubpull", "0007_request_fillfactor"),
    ]

    operations = [
        migrations.CreateModel(
            name="MirrorSeen",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("mirror", models.CharField(max_length=200)),
                ("object_pk", models.TextField(null=True)),
            ],
        ),
        migrations.CreateModel(
            name="ParkedEvent",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "position",
                    models.CharField(
                        blank=True,
                        help_text="Where the page was: feed cursor or snapshot URL.",
                        max_length=2000,
                    ),
                ),
                ("model", models.CharField(max_length=200)),
                ("object_pk", models.TextField(blank=True)),
                ("op", models.CharField(max_length=16)),
                ("event", models.JSONField(help_text="The event as the handler received it.")),
                ("error", models.TextField()),
                ("attempts", models.PositiveIntegerField(default=1)),
                ("created", models.DateTimeField(auto_now_add=True)),
                ("last_attempt_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "ordering": ["cursor", "id"],
            },
        ),
        migrations.RemoveConstraint(
            model_name="remotesubscription",
            name="pubsubpull_remotesubscription_name",
        ),
        migrations.AddField(
            model_name="mirrortombstone",
            name="at",
            field=models.DateTimeField(
                auto_now=True, help_text="When the delete was last applied."
            ),
        ),
        migrations.AddField(
            model_name="pullcursor",
            name="park_failures",
            field=models.BooleanField(
                default=False,
                help_text="Set by the park action of a blocked cursor: the next page is applied event by event, the events that fail are parked (ParkedEvent) and the pull goes on.",
            ),
        ),
        migrations.AddField(
            model_name="remotesubscription",
            name="owner",
            field=models.CharField(
                blank=True,
                help_text="Who we are at the publisher: a fingerprint of the token that subscribed (two tokens may each have a subscription of the same name there).",
                max_length=40,
            ),
        ),
        migrations.RunPython(fill_owners, keep_one_per_name, elidable=True),
        migrations.AlterField(
            model_name="pullcursor",
            name="state",
            field=models.CharField(
                choices=[
                    ("active", "Active"),
                    ("failing", "failing (retrying with backoff)"),
                    ("blocked", "blocked (a page that can never apply: resume or park it)"),
                    ("paused", "Paused"),
                ],
                default="active",
                max_length=16,
            ),
        ),
        migrations.AddIndex(
            model_name="mirrortombstone",
            index=models.Index(fields=["mirror", "at"], name="pubsubpull_tombstone_at"),
        ),
        migrations.AddConstraint(
            model_name="remotesubscription",
            constraint=models.UniqueConstraint(
                fields=("publisher", "owner", "name"), name="pubsubpull_remotesubscription_owner"
            ),
        ),
        migrations.AddConstraint(
            model_name="mirrorseen",
            constraint=models.UniqueConstraint(
                fields=("mirror", "object_pk"), name="pubsubpull_mirrorseen_pk"
            ),
        ),
        migrations.AddField(
            model_name="parkedevent",
            name="cursor",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE,
                related_name="parked",
                to="pubsubpull.pullcursor",
            ),
        ),
    ]
