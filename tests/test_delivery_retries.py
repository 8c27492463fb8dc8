"""Retries keep their backoff schedule, even on a publisher that never stops writing."""

from __future__ import annotations

import itertools
import threading

import pytest
from django.db import connection

from customers.models import Customer
from pubsubpull.publisher.delivery.models import Attempt

from .delivery_helpers import WorkerThread, make_subscription, use_fast_settings
from .receivers import Answer, Receiver

pytestmark = pytest.mark.django_db(transaction=True)

# The wait doubles up to the cap (reached at the third retry), then holds there.
BASE, CAP = 0.4, 1.6


@pytest.fixture
def schedule(settings):
    use_fast_settings(settings)
    # A lease much longer than the early delays: a retry that waits for a
    # wake flag to age past it shows at once.
    settings.PUBSUBPULL = {
        **settings.PUBSUBPULL,
        "RETRY_BASE": BASE,
        "RETRY_MAX": CAP,
        "LEASE": 15.0,
    }
    return settings


class Writer(threading.Thread):
    """Creates a customer every 20 ms until stopped: each commit wakes the subscription."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.written = 0

    def run(self):
        try:
            while not self.stop.is_set():
                Customer.objects.create(name=f"w{self.written}")
                self.written += 1
                self.stop.wait(0.02)
        finally:
            connection.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join(10)


def test_a_failing_receiver_of_a_busy_publisher_is_retried_on_the_backoff_schedule(schedule):
    # The receiver is down (500, after a moment, so that the writer's wakes
    # arrive while each attempt is in flight); the publisher keeps writing.
    tries = 7
    with Receiver(lambda r, n: Answer(500, delay=0.1)) as receiver:
        make_subscription(receiver.url())
        with WorkerThread(), Writer() as writer:
            receiver.wait_for(lambda: len(receiver.requests) >= tries, timeout=90)
        assert writer.written > 100
    times = [r.at for r in receiver.requests[:tries]]
    assert len({r.webhook_id for r in receiver.requests[:tries]}) == 1  # the same batch
    # After the k-th failure in a row the wait is RETRY_BASE * 2**(k-1),
    # capped at RETRY_MAX, times a jitter of 0.5 to 1; a retry then starts
    # within a sweep interval (0.2 s). The slack allows a loaded machine;
    # without the fix each early retry waited for LEASE (15 s).
    for k, gap in enumerate((b - a for a, b in itertools.pairwise(times)), 1):
        planned = min(CAP, BASE * 2 ** (k - 1))
        assert 0.5 * planned <= gap <= planned + 3.0, (k, gap, planned)
    failures = list(Attempt.objects.order_by("at").values_list("status", flat=True))
    assert failures[:tries] == [500] * tries
