"""A published row of 3 MB reaches a real ``pubsubpull.receiver`` (billing, its own process).

Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB, billing leaves the default)
used to answer 400 before the receiver's own limit applied, and the
publisher retried the same batch until it disabled the subscription.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.db import connection

from pubsubpull.publisher.delivery.models import Attempt, Subscription

from .delivery_helpers import WorkerThread, use_fast_settings
from .services import billing, billing_service, wait_until  # noqa: F401  (fixtures)
from .test_two_services import welcomes

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

BIG = 3 * 1024 * 1024


@pytest.fixture
def roomy_last_name(transactional_db):
    """No published field of the test project holds 3 MB: widen one for the test."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE auth_user ALTER COLUMN last_name TYPE text")
    yield
    with connection.cursor() as cursor:
        cursor.execute("UPDATE auth_user SET last_name = left(last_name, 150)")
        cursor.execute("ALTER TABLE auth_user ALTER COLUMN last_name TYPE varchar(150)")


def test_a_3mb_row_is_delivered_alone_to_pubsubpull_receiver(billing, settings, roomy_last_name):  # noqa: F811
    use_fast_settings(settings)
    billing.start_server()
    billing.shell(
        "import pubsubpull; from django.conf import settings; "
        "pubsubpull.subscribe(settings.CUSTOMERS_URL, 'welcome', "
        f"'{billing.url}/hooks/users/', models=['auth.user'], auth=settings.CUSTOMERS_TOKEN)"
    )
    with WorkerThread():
        User.objects.create_user("before")
        big = User.objects.create_user("big", last_name="x" * BIG)
        User.objects.create_user("after")
        wait_until(lambda: len(welcomes(billing)) == 3, timeout=60)

    assert [user_id for user_id, _, _ in welcomes(billing)][1] == big.pk
    attempts = list(Attempt.objects.order_by("at"))
    assert all(a.status == 204 for a in attempts), [(a.status, a.response) for a in attempts]
    [alone] = [a for a in attempts if a.first_change_id == a.last_change_id
               and a.duration and a.changes == 1 and _is_big(a)]  # fmt: skip
    assert alone.changes == 1
    subscription = Subscription.objects.get()
    assert subscription.state == "active" and subscription.delivered == 3


def _is_big(attempt) -> bool:
    from pubsubpull.models import Change

    change = Change.objects.get(pk=attempt.first_change_id)
    return len(change.new["last_name"]) == BIG


@pytest.mark.django_db
def test_the_receiver_reads_up_to_its_own_limit_and_answers_413_past_it(settings):
    import json

    from django.test import RequestFactory

    from pubsubpull.client.receiver import receiver

    view = receiver(lambda event: None)
    body = json.dumps({"data": {"subscription": "nobody", "pad": "x" * BIG}}).encode()
    assert len(body) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    factory = RequestFactory()
    # Read whole (Django's own limit would have answered 400): then refused
    # for what it says, an unknown subscription.
    answer = view(factory.put("/hook/", body, content_type="application/json"))
    assert answer.status_code == 401 and json.loads(answer.content)["error"] == (
        "unknown_subscription"
    )
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "RECEIVER_MAX_BYTES": 1024 * 1024}
    answer = view(factory.put("/hook/", body, content_type="application/json"))
    assert answer.status_code == 413
    assert json.loads(answer.content)["detail"] == "The body must be at most 1048576 bytes."
