"""Fixtures for delivery tests: subscriptions, a worker in a thread, fast settings."""

from __future__ import annotations

import threading
import time

from django.db import connection

from pubsubpull.jobs.worker import Worker
from pubsubpull.publisher.delivery.deliver import drain
from pubsubpull.publisher.delivery.subscriptions import subscribe

FAST = {
    "RETRY_BASE": 0.05,
    "RETRY_MAX": 1.0,
    "LEASE": 2.0,
    "TIMEOUT": 1.0,
    "CONNECT_TIMEOUT": 1.0,
    "SWEEP_INTERVAL": 0.2,
}


def use_fast_settings(settings):
    """Short backoff, lease and timeouts (the test settings allow loopback receivers)."""
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, **FAST}
    return settings


def make_subscription(callback, name="billing", owner="token:1", **fields):
    """Subscribe as ``owner``; a ``token:N`` owner gets a real token N for every model.

    Delivery checks the owner's access before each batch, so the owner must exist.
    """
    kind, _, key = owner.partition(":")
    if kind == "token":
        from pubsubpull.models import ServiceToken
        from pubsubpull.publisher.api.auth import hash_token, new_token

        text = new_token()
        ServiceToken.objects.get_or_create(
            pk=int(key),
            defaults={"name": f"owner-{key}", "key_hash": hash_token(text), "scope": ["*"]},
        )
        with connection.cursor() as cursor:  # so that create_token() picks a free id
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence('pubsubpull_servicetoken', 'id'), "
                "(SELECT max(id) FROM pubsubpull_servicetoken))"
            )
    data = {"callback": callback, "models": ["customers.customer"], "start": "beginning"}
    data.update(fields)
    return subscribe(owner, name, data)


class WorkerThread:
    def __init__(self, **kwargs):
        kwargs.setdefault("threads", 2)
        kwargs.setdefault("poll", 0.2)
        self.worker = Worker(**kwargs, log=lambda message: None)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        assert self.worker.ready.wait(10), "the worker did not start listening"
        return self.worker

    def __exit__(self, *exc):
        self.worker.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive()


def wait_until(predicate, timeout=60.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s")
        time.sleep(interval)


def settle(timeout=60.0):
    """Wait until the feed serves every change committed so far.

    The feed's fence is the oldest transaction still open: a long transaction
    of another test run or benchmark on the same PostgreSQL server can hold it
    back. Tests that expect a drain to deliver what they just committed wait
    for that first.
    """
    from pubsubpull.models import Change
    from pubsubpull.publisher import feed

    newest = Change.objects.order_by("-txid", "-id").values_list("txid", "id").first()
    if newest is None:
        return
    before = feed.Position(newest[0], newest[1] - 1)

    def served():
        changes = feed.read_changes(before, 1).changes
        return bool(changes) and changes[0].id == newest[1]

    wait_until(served, timeout=timeout, interval=0.02)


def drain_settled(subscription_id):
    """``drain`` once everything committed so far can be delivered."""
    settle()
    return drain(subscription_id)
