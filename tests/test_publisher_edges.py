"""The publisher's edges: callers who get it wrong, operators meeting odd rows, owners who lose access.

Each test is what a user, an operator or an attacker would do, on real
PostgreSQL through the real views (Django's test client), and real HTTP
receivers on 127.0.0.1 where something is delivered.
"""

from __future__ import annotations

import json
import uuid

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.urls import resolve, reverse
from standardwebhooks import Webhook

from customers.models import Country, Customer
from pubsubpull.models import Change, ServiceToken
from pubsubpull.publisher.api.auth import create_token
from pubsubpull.publisher.api.openapi import field_schema
from pubsubpull.publisher.delivery.models import Attempt, ParkedChange, Subscription

from .delivery_helpers import drain_settled, make_subscription, use_fast_settings
from .receivers import Answer, Receiver

BASE = "/pubsubpull/"


def put_json(client, path, body, **kwargs):
    return client.put(path, json.dumps(body), content_type="application/json", **kwargs)


# --- Who is calling ------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_empty_bearer_header_is_refused_saying_so(client):
    response = client.get(f"{BASE}changes/", headers={"Authorization": "Bearer   "})
    assert response.status_code == 401
    assert response.json()["detail"] == "The Authorization header has no bearer token."


@pytest.mark.django_db
def test_basic_credentials_are_left_to_django_and_the_session_user_reads(client):
    """A proxy's Basic header is not a bearer token: the logged-in user is the caller."""
    user = User.objects.create_user("clerk")
    user.user_permissions.add(Permission.objects.get(codename="view_customer"))
    client.force_login(user)
    response = client.get(
        f"{BASE}changes/?models=customers.customer",
        headers={"Authorization": "Basic cHJveHk6cHc="},
    )
    assert response.status_code == 200
    anonymous = Client().get(f"{BASE}changes/", headers={"Authorization": "Basic cHJveHk6cHc="})
    assert anonymous.status_code == 401


@pytest.mark.django_db
def test_a_logged_in_user_subscribing_from_another_site_is_stopped_by_csrf():
    user = User.objects.create_user("clerk")
    user.user_permissions.add(Permission.objects.get(codename="view_customer"))
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    body = {"callback": "https://billing.example/hook", "models": ["customers.customer"]}
    forged = put_json(browser, f"{BASE}subscriptions/b/", body)
    assert forged.status_code == 403
    assert forged.json()["detail"] == "CSRF verification failed."
    assert not Subscription.objects.exists()
    # The same user's reads need no token.
    assert browser.get(f"{BASE}changes/?models=customers.customer").status_code == 200


@pytest.mark.django_db
def test_anonymous_readers_may_read_but_not_subscribe_nor_see_metrics(client, settings):
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "ANONYMOUS_MODELS": ["customers.country"]}
    assert client.get(f"{BASE}changes/?models=customers.country").status_code == 200
    body = {"callback": "https://billing.example/hook", "models": ["customers.country"]}
    subscribing = put_json(client, f"{BASE}subscriptions/b/", body)
    assert subscribing.status_code == 401
    assert "Subscribing needs an identity" in subscribing.json()["detail"]
    assert client.get(f"{BASE}subscriptions/").status_code == 401
    metrics = client.get(f"{BASE}metrics")
    assert metrics.status_code == 401
    assert "Metrics need credentials" in metrics.json()["detail"]


@pytest.mark.django_db(transaction=True)
def test_health_answers_503_when_the_database_is_unreachable(client):
    """A real outage: the connection goes to a port nothing listens on."""
    db = connection.settings_dict
    port = db["PORT"]
    connection.close()
    db["PORT"] = "1"
    try:
        response = client.get(f"{BASE}health/")
    finally:
        connection.close()
        db["PORT"] = port
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "unreachable"}
    assert client.get(f"{BASE}health/").json()["database"] != "unreachable"


# --- URLs and the document -----------------------------------------------------------------


@pytest.mark.django_db
def test_a_project_reversing_an_instance_url_gets_one_that_serves_it():
    """Primary keys are any text: the URL converter passes them through both ways."""
    country = Country.objects.create(code="f/", name="France")
    url = reverse("pubsubpull:instance", args=["customers.country", country.pk])
    assert resolve(url).kwargs == {"model": "customers.country", "pk": "f/"}
    user = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200 and "France" in response.text


def test_a_json_column_may_hold_any_json_value_in_the_document():
    from django.db import models

    assert field_schema(models.JSONField(null=True)) == {}
    assert field_schema(models.IntegerField(null=True)) == {"type": ["integer", "null"]}
