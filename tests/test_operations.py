"""A load balancer asks /health/, Prometheus scrapes /metrics."""

import os

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection

from customers.models import Customer
from pubsubpull.models import WorkerHeartbeat
from pubsubpull.publisher.api.auth import create_token
from pubsubpull.publisher.delivery.models import Subscription

from .delivery_helpers import WorkerThread

pytestmark = pytest.mark.django_db(transaction=True)


def test_health_needs_the_database_and_a_fresh_worker(client):
    response = client.get("/pubsubpull/health/")
    assert response.status_code == 503
    assert response.json() == {
        "status": "degraded",
        "database": "ok",
        "workers": {"fresh": 0, "stale": 0},
    }

    with WorkerThread():
        (beat,) = WorkerHeartbeat.objects.all()
        assert beat.name.endswith(f":{os.getpid()}")
        response = client.get("/pubsubpull/health/")
        assert response.status_code == 200
        assert response.json()["workers"] == {"fresh": 1, "stale": 0}
    assert not WorkerHeartbeat.objects.exists()  # a clean stop removes it

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pubsubpull_workerheartbeat VALUES ('gone:1', now() - interval '1 hour', "
            "now() - interval '10 minutes')"
        )
    response = client.get("/pubsubpull/health/")
    assert response.status_code == 503
    assert response.json()["workers"] == {"fresh": 0, "stale": 1}


def test_metrics_are_behind_access_control_and_report_lag(client):
    Customer.objects.create(name="Ada")
    Customer.objects.create(name="Grace")
    Subscription.objects.create(
        owner="token:1",
        name="billing",
        callback="http://127.0.0.1:9/",
        model_labels=["customers.customer"],
        secret="whsec_dGVzdA==",
    )
    assert client.get("/pubsubpull/metrics").status_code == 401
    _, narrow = create_token("narrow", ["customers.customer"])
    denied = client.get("/pubsubpull/metrics", headers={"Authorization": f"Bearer {narrow}"})
    assert denied.status_code == 403
    assert "'*' scope" in denied.json()["detail"]

    _, ops = create_token("prometheus", ["*"])
    response = client.get("/pubsubpull/metrics", headers={"Authorization": f"Bearer {ops}"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.content.decode()
    assert "# TYPE pubsubpull_changes_recorded_total counter" in text
    assert 'pubsubpull_subscription_lag_changes{subscription="token:1/billing"} 2' in text
    assert 'pubsubpull_subscription_state{subscription="token:1/billing",state="active"} 1' in text
    assert 'pubsubpull_workers{heartbeat="fresh"} 0' in text

    user = User.objects.create_user("ops", password="pw")
    client.force_login(user)
    assert client.get("/pubsubpull/metrics").status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_subscription"))
    assert client.get("/pubsubpull/metrics").status_code == 200
