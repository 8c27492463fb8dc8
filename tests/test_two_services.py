"""Two real services over real HTTP: billing follows customers.

customers is the publisher test project served by ``live_server``; billing is
the subscriber test project, run as its own web server and worker processes
on its own database (see tests/services.py).
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from standardwebhooks import Webhook

from customers.models import Country, Customer
from pubsubpull.publisher import feed

from . import services
from .delivery_helpers import WorkerThread, use_fast_settings
from .services import Switch, wait_until

billing_service, billing = services.billing_service, services.billing  # the fixtures

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def published_customers() -> dict[int, tuple]:
    return {c.pk: (c.name, c.country_id) for c in Customer.objects.all()}


def mirrored_customers(billing) -> dict[int, tuple]:
    rows = billing.sql("SELECT remote_id, name, country FROM billing_customercountry")
    return {r[0]: (r[1], r[2]) for r in rows}


def welcomes(billing) -> list[tuple]:
    return billing.sql("SELECT user_id, sequence, via FROM billing_welcome ORDER BY id")


def test_billing_mirrors_customers_country_while_they_change(billing):
    countries = [Country.objects.create(code=c, name=c) for c in ("FR", "DE", "NL", "IT")]
    Customer.objects.bulk_create(
        Customer(name=f"c{i}", country=random.choice(countries)) for i in range(200)
    )
    billing.overrides["PULL_PAGE_SIZE"] = 7  # a snapshot of many pages
    billing.start_worker()
    billing.shell("from billing.mirrors import customers; customers.pull()")

    # Customers are created, updated and deleted while billing reads its snapshot.
    stop = threading.Event()
    rng = random.Random(6)

    def write():
        from django.db import connection

        try:
            while not stop.is_set():
                ids = list(Customer.objects.values_list("pk", flat=True))
                action = rng.random()
                if action < 0.3 or not ids:
                    Customer.objects.create(
                        name=f"new{rng.random()}", country=rng.choice(countries)
                    )
                elif action < 0.8:
                    Customer.objects.filter(pk=rng.choice(ids)).update(
                        country=rng.choice([*countries, None]), name=f"renamed{rng.random()}"
                    )
                else:
                    Customer.objects.filter(pk=rng.choice(ids)).delete()
                time.sleep(0.005)
        finally:
            connection.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(
            lambda: billing.sql("SELECT phase FROM pubsubpull_pullcursor") == [("feed",)],
            timeout=60,
        )
        time.sleep(0.5)  # and a little while following the feed
    finally:
        stop.set()
        writer.join()

    expected = published_customers()
    wait_until(lambda: mirrored_customers(billing) == expected, timeout=30)
    [(snapshots, failures)] = billing.sql("SELECT snapshots, failures FROM pubsubpull_pullcursor")
    assert snapshots == 1 and failures == 0


def test_comms_welcomes_each_new_user_once_across_restarts_and_redelivery(billing, settings):
    use_fast_settings(settings)
    server = billing.start_server()
    billing.shell(
        "import pubsubpull; from django.conf import settings; "
        "pubsubpull.subscribe(settings.CUSTOMERS_URL, 'welcome', "
        f"'{billing.url}/hooks/users/', models=['auth.user'], auth=settings.CUSTOMERS_TOKEN)"
    )
    with WorkerThread():
        users = [User.objects.create_user(f"u{i}") for i in range(5)]
        wait_until(lambda: len(welcomes(billing)) == 5)

        # The receiver goes down; users keep coming; it comes back.
        server.stop()
        billing.processes.remove(server)
        users += [User.objects.create_user(f"v{i}") for i in range(3)]
        time.sleep(1.0)  # deliveries fail meanwhile
        billing.start_server()
        wait_until(lambda: len(welcomes(billing)) == 8)

        # The publisher sends everything again (its position was rewound,
        # say from a backup): new batches, old changes.
        from pubsubpull.publisher.delivery.models import Subscription

        Subscription.objects.update(position_txid=0, position_id=0)
        from pubsubpull.publisher.delivery.deliver import DELIVERY

        DELIVERY.wake(Subscription.objects.values_list("id", flat=True), force=True)
        users.append(User.objects.create_user("w0"))
        wait_until(lambda: len(welcomes(billing)) >= 9)
        time.sleep(0.5)

    # The same batch twice (same webhook-id), as after a lost 204.
    [(secret, position)] = billing.sql("SELECT secret, position FROM pubsubpull_remotesubscription")
    user = User.objects.create_user("x0")
    change = feed.read_changes(after=position, models=["auth.user"]).changes[-1].as_json()
    assert change["pk"] == user.pk
    body = json.dumps(
        {"type": "pubsubpull.changes", "timestamp": change["at"],
         "data": {"subscription": "welcome", "cursor": change["cursor"], "changes": [change]}}
    )  # fmt: skip
    webhook_id = f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, now, body),
    }
    for _ in range(2):
        answer = httpx.put(billing.url + "/hooks/users/", content=body, headers=headers)
        assert answer.status_code == 204
    users.append(user)

    # A wrong secret: refused, nothing handled.
    wrong = headers | {
        "webhook-id": "msg_wrong",
        "webhook-signature": Webhook("whsec_" + "A" * 43 + "=").sign("msg_wrong", now, body),
    }
    answer = httpx.put(billing.url + "/hooks/users/", content=body, headers=wrong)
    assert answer.status_code == 401 and "signature" in answer.json()["detail"]
    for bad in ({"webhook-signature": "garbage"}, {"webhook-timestamp": "1"}):
        answer = httpx.put(billing.url + "/hooks/users/", content=body, headers=headers | bad)
        assert answer.status_code == 401

    handled = welcomes(billing)
    assert sorted(user_id for user_id, _, _ in handled) == sorted(u.pk for u in users)
    assert {via for _, _, via in handled} == {"push"}


def test_a_wrong_secret_handles_nothing_until_it_is_right(billing, settings):
    use_fast_settings(settings)
    billing.start_server()
    billing.shell(
        "import pubsubpull; from django.conf import settings; "
        "pubsubpull.subscribe(settings.CUSTOMERS_URL, 'welcome', "
        f"'{billing.url}/hooks/users/', models=['auth.user'], auth=settings.CUSTOMERS_TOKEN)"
    )
    [(secret,)] = billing.sql("SELECT secret FROM pubsubpull_remotesubscription")
    billing.sql("UPDATE pubsubpull_remotesubscription SET secret = %s", ["whsec_" + "B" * 43 + "="])
    from pubsubpull.publisher.delivery.models import Attempt

    with WorkerThread():
        User.objects.create_user("eve")
        wait_until(lambda: Attempt.objects.filter(status=401).count() >= 2)
        assert welcomes(billing) == []
        billing.sql("UPDATE pubsubpull_remotesubscription SET secret = %s", [secret])
        wait_until(lambda: len(welcomes(billing)) == 1)


def test_a_pull_worker_killed_mid_page_misses_nothing(billing):
    billing.overrides["PULL_PAGE_SIZE"] = 10
    billing.extra_env["BILLING_HANDLER_DELAY"] = "0.05"  # half a second a page
    billing.shell(
        "import pubsubpull; from django.conf import settings; "
        "pubsubpull.pull_up(settings.CUSTOMERS_URL, 'billing.handlers.welcome_pulled', "
        "models=['auth.user'], auth=settings.CUSTOMERS_TOKEN, enqueue=False)"
    )
    users = [User.objects.create_user(f"u{i}") for i in range(40)]
    worker = billing.start_worker()
    wait_until(lambda: len(welcomes(billing)) >= 10, timeout=30)
    time.sleep(0.25)  # in the middle of the next page
    worker.kill()
    done = len(welcomes(billing))
    assert done % 10 == 0 and done < 40  # whole pages only
    users += [User.objects.create_user(f"v{i}") for i in range(5)]

    billing.start_worker()  # takes the cursor over when the dead one's lease ends
    wait_until(lambda: len(welcomes(billing)) == 45, timeout=30)
    time.sleep(0.5)
    handled = welcomes(billing)
    assert [user_id for user_id, _, _ in handled] == [u.pk for u in users]  # once each, in order


def test_publisher_down_for_a_while_the_client_backs_off_and_catches_up(billing, live_server):
    switch = Switch(live_server.url)
    switch.up()
    try:
        billing.customers_url = switch.url + "/pubsubpull/"
        Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(20))
        billing.start_worker()
        billing.shell("from billing.mirrors import customers; customers.pull()")
        wait_until(lambda: mirrored_customers(billing) == published_customers())

        switch.down()
        Customer.objects.filter(name__in=["c1", "c2"]).update(name="moved")
        Customer.objects.create(name="while down")

        def failing():
            rows = billing.sql("SELECT failures, last_error FROM pubsubpull_pullcursor")
            return rows[0][0] >= 2 and rows

        [(_, error)] = wait_until(failing, timeout=30)
        # Refused, reset or dropped, depending on where the request was.
        assert error.startswith("SourceError") and "Error" in error.split(": ", 2)[-1]
        assert mirrored_customers(billing) != published_customers()

        switch.up()
        wait_until(lambda: mirrored_customers(billing) == published_customers(), timeout=30)
        wait_until(lambda: billing.sql("SELECT failures FROM pubsubpull_pullcursor") == [(0,)])
    finally:
        switch.down()


def test_billing_mirrors_customers_by_push_and_catches_up_after_a_gap(billing, settings):
    use_fast_settings(settings)
    from pubsubpull.publisher.delivery.models import Subscription

    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(30))
    server = billing.start_server()
    # A copy made now (snapshot and feed), then a subscription from where it ended.
    billing.shell(
        "from billing.mirrors import customers; "
        f"customers.subscribe('{billing.url}/hooks/customers/')"
    )
    assert mirrored_customers(billing) == published_customers()

    with WorkerThread():
        first = Customer.objects.order_by("pk").first()
        first.name = "pushed"
        first.save()
        Customer.objects.order_by("pk").last().delete()
        Customer.objects.create(name="new")
        wait_until(lambda: mirrored_customers(billing) == published_customers())

        # Billing's web server goes down; changes go on.
        server.stop()
        billing.processes.remove(server)
        Customer.objects.filter(pk=first.pk).update(name="while down")
        Customer.objects.create(name="also while down")
        wait_until(lambda: Subscription.objects.get().failures >= 1)
        assert mirrored_customers(billing) != published_customers()

        # At start-up billing pulls from the last change it handled...
        billing.shell("from billing.mirrors import customers; print(customers.catch_up())")
        assert mirrored_customers(billing) == published_customers()

        # ...and the publisher's retries bring what catch_up applied already.
        billing.start_server()
        Subscription.objects.update(next_attempt_at=timezone.now())
        Customer.objects.create(name="after")
        wait_until(lambda: mirrored_customers(billing) == published_customers())
    [(received,)] = billing.sql("SELECT received FROM pubsubpull_remotesubscription")
    assert received >= 4


def test_two_tokens_subscribe_with_one_name_and_each_is_verified_with_its_own_secret(
    billing, settings
):
    """Two of billing's tokens (say, two teams) each subscribe 'welcome' at customers.

    The publisher keeps one subscription per owner and name; so does billing,
    and its receiver verifies each notification with the secret that signs it.
    """
    use_fast_settings(settings)
    from pubsubpull.publisher.api.auth import create_token
    from pubsubpull.publisher.delivery.models import Attempt, Subscription

    other_token = create_token("billing-team-2", ["auth.user"])[1]
    billing.start_server()
    for token in (billing.customers_token, other_token):
        billing.shell(
            "import pubsubpull; from django.conf import settings; "
            "pubsubpull.subscribe(settings.CUSTOMERS_URL, 'welcome', "
            f"'{billing.url}/hooks/users/', models=['auth.user'], auth={token!r})"
        )
    assert Subscription.objects.filter(name="welcome").count() == 2
    secrets = billing.sql("SELECT DISTINCT secret FROM pubsubpull_remotesubscription")
    assert len(secrets) == 2

    with WorkerThread():
        user = User.objects.create_user("ada")
        wait_until(lambda: Subscription.objects.filter(delivered__gte=1).count() == 2)
    assert not Attempt.objects.exclude(status=204).exists()
    assert [user_id for user_id, _, _ in welcomes(billing)] == [user.pk, user.pk]  # one each
    received = billing.sql("SELECT received FROM pubsubpull_remotesubscription")
    assert received == [(1,), (1,)]
