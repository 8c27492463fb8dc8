"""Migration 0008 (client convergence) keeps remote subscriptions on the way up and down."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import connection


def _subscriptions() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, token, secret FROM pubsubpull_remotesubscription ORDER BY id")
        return cursor.fetchall()


@pytest.mark.django_db(transaction=True)
def test_0008_fills_owners_and_reverses_to_one_subscription_per_name():
    from pubsubpull.client.models import RemoteSubscription

    try:
        call_command("migrate", "pubsubpull", "0007", verbosity=0)
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO pubsubpull_remotesubscription (publisher, name, callback, "
                "model_labels, secret, token, position, received, created) VALUES "
                "('http://c/pubsubpull/', 'welcome', 'http://b/hooks/', '[]', 'whsec_a', "
                "'psp_a', '', 0, now())"
            )
        call_command("migrate", "pubsubpull", verbosity=0)
        [record] = RemoteSubscription.objects.all()
        assert record.owner == RemoteSubscription.owner_for("psp_a")
        # A second owner's subscription of the same name, as 0008 allows.
        RemoteSubscription.objects.create(
            publisher="http://c/pubsubpull/", owner=RemoteSubscription.owner_for("psp_b"),
            name="welcome", callback="http://b/hooks/", secret="whsec_b", token="psp_b",
        )  # fmt: skip

        # Back to one per publisher and name: the newest stays.
        call_command("migrate", "pubsubpull", "0007", verbosity=0)
        assert _subscriptions() == [("welcome", "psp_b", "whsec_b")]
    finally:
        call_command("migrate", "pubsubpull", verbosity=0)
    assert [r.owner for r in RemoteSubscription.objects.all()] == [
        RemoteSubscription.owner_for("psp_b")
    ]
