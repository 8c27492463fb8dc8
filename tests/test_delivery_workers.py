"""Several workers share the work; killing one loses nothing; one bad receiver blocks nobody."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection, transaction

from customers.models import Customer
from pubsubpull.publisher.delivery.models import Attempt, Subscription

from .delivery_helpers import FAST, WorkerThread, make_subscription, use_fast_settings
from .receivers import Answer, Receiver

pytestmark = pytest.mark.django_db(transaction=True)

MANAGE = Path(__file__).resolve().parent.parent / "test-projects" / "publisher" / "manage.py"


@pytest.fixture(autouse=True)
def fast(settings):
    return use_fast_settings(settings)


def start_worker(overrides):
    env = {
        **os.environ,
        "PUBLISHER_DB_NAME": connection.settings_dict["NAME"],
        "PUBSUBPULL_OVERRIDES": json.dumps(overrides),
    }
    return subprocess.Popen(
        [sys.executable, str(MANAGE), "pubsubpull_worker", "--threads", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_workers_one_killed_mid_delivery_loses_nothing():
    hung = {}

    def answer(received, n):
        if n == 0:
            hung["at"] = time.time()
            return Answer(delay=20.0)  # never answered: its worker is killed meanwhile
        return Answer()

    overrides = {**FAST, "LEASE": 2.0, "TIMEOUT": 30.0}
    with Receiver(answer) as receiver:
        subscription = make_subscription(receiver.url(), batch_size=5).subscription
        workers = [start_worker(overrides) for _ in range(2)]
        try:
            for n in range(12):
                Customer.objects.create(name=f"c{n}")
            receiver.wait_for(lambda: len(receiver.requests) >= 1)
            subscription.refresh_from_db()
            holder = int(subscription.lease_owner.split(":")[1])
            victim = next(w for w in workers if w.pid == holder)
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.time()
            victim.wait(5)
            receiver.wait_for(lambda: len(receiver.accepted_changes()) == 12)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
            for worker in workers:
                try:
                    worker.wait(10)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()

    first, *rest = receiver.requests
    redelivered = next(r for r in rest if r.webhook_id == first.webhook_id)
    # The batch in flight came again, same id, soon after the lease ran out.
    assert redelivered.body == first.body or redelivered.changes == first.changes
    assert redelivered.at - killed_at < overrides["LEASE"] + 3.0
    names = [c["new"]["name"] for c in receiver.accepted_changes()]
    assert names == [f"c{n}" for n in range(12)]


def test_one_failing_subscription_of_a_hundred_does_not_hold_up_the_others():
    with (
        Receiver() as good,
        Receiver(lambda r, n: Answer(500, body=b"down")) as bad,
    ):
        make_subscription(bad.url("/s/bad/"), name="bad")
        for n in range(99):
            make_subscription(good.url(f"/s/{n}/"), name=f"s{n}")
        with WorkerThread(threads=4):
            for n in range(5):
                with transaction.atomic():
                    Customer.objects.bulk_create([Customer(name=f"c{n}.{m}") for m in range(4)])
            good.wait_for(
                lambda: all(len(good.accepted_changes(f"/s/{n}/")) == 20 for n in range(99)),
                timeout=60,
            )
        for n in range(99):
            names = [c["new"]["name"] for c in good.accepted_changes(f"/s/{n}/")]
            assert names == [f"c{a}.{b}" for a in range(5) for b in range(4)]
    bad_subscription = Subscription.objects.get(name="bad")
    assert bad_subscription.state == "failing"
    assert (bad_subscription.position_txid, bad_subscription.position_id) == (0, 0)
    assert Attempt.objects.filter(subscription=bad_subscription, status=500).exists()
    assert Subscription.objects.exclude(name="bad").filter(state="active").count() == 99
