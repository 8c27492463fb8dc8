"""An operator runs the publisher's commands: tokens, subscriptions, pruning, with mistakes."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client

from customers.models import Customer
from pubsubpull.models import Change, ServiceToken
from pubsubpull.publisher.models import Horizon
from pubsubpull.publisher.retention import prune

pytestmark = pytest.mark.django_db


def run(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_a_token_for_every_model_reads_any_model_and_names_stay_unique():
    token, told = run("pubsubpull_token", "create", "audit", "--all-models")
    token = token.strip()
    assert "for *" in told and ServiceToken.objects.get(name="audit").scope == ["*"]
    client = Client(headers={"Authorization": f"Bearer {token}"})
    for label in ("customers.customer", "customers.country"):
        assert client.get(f"/pubsubpull/models/{label}/instances/").status_code == 200

    with pytest.raises(CommandError, match="A token named 'audit' exists; revoke or delete"):
        run("pubsubpull_token", "create", "audit", "--models", "customers.customer")
    assert ServiceToken.objects.filter(name="audit").count() == 1


@pytest.mark.parametrize("action", ["revoke", "delete"])
def test_revoking_or_deleting_an_unknown_token_says_so(action):
    run("pubsubpull_token", "create", "billing", "--models", "customers.customer")
    with pytest.raises(CommandError, match="No token named 'bililng'"):
        run("pubsubpull_token", action, "bililng")
    assert ServiceToken.objects.get(name="billing").is_active  # the typo touched nothing


def test_the_subscriptions_command_says_when_there_are_none():
    out, _ = run("pubsubpull_subscriptions")
    assert out == "No subscriptions.\n"


@pytest.mark.django_db(transaction=True)
def test_a_verbose_prune_reports_progress_per_batch():
    Customer.objects.bulk_create(Customer(name=f"c{n}") for n in range(5))
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pubsubpull_change SET at = at - interval '40 days'")
    out, _ = run("pubsubpull_prune", "--older-than", "30d", "--batch-size", "2", "--verbosity", "2")
    progress = [line for line in out.split("\r") if "so far" in line]
    counts = [p.strip().split()[0] for p in progress]
    assert counts[:3] == ["2", "4", "5"] and set(counts[3:]) <= {"5"}  # then requests
    assert not Change.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_pruning_from_code_defaults_to_the_retention_setting(settings):
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "RETENTION": 3600}
    Customer.objects.create(name="old")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pubsubpull_change SET at = at - interval '2 hours'")
    Customer.objects.create(name="young")
    done = prune()
    assert done.changes == 1
    assert list(Change.objects.values_list("new__name", flat=True)) == ["young"]
    horizon = Horizon.objects.get()
    assert str(horizon) == f"changes up to ({horizon.txid}, {horizon.change_id}) pruned"
    assert prune(older_than=timedelta(hours=3)).changes == 0
