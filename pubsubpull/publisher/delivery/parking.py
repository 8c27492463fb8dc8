"""Parked changes: set aside the change a receiver refuses, go on, send it again later.

A poison change (one the receiver can never accept) stops its subscription:
delivery is in order and never skips. An operator who has looked at it can
park it, in the admin or with ``PUT {prefix}/subscriptions/<name>/parked/<change_id>/``:
the change and the attempts that failed are kept in a :class:`ParkedChange`,
the position moves past it, and delivery goes on with the rest, in order.
Once the receiver can take it, :func:`resend` PUTs it to the callback again,
signed like any batch, with ``"parked": true`` in its ``data`` (and no
``cursor``: it is out of order, so a receiver applies it only if its
``sequence`` is newer than what it holds for that object).

Example::

    from pubsubpull.publisher.delivery import parking

    parked = parking.park(subscription, change_id=812, by="admin:ops")
    ...  # the receiver is fixed
    parking.resend(parked)  # -> parked.resent_status == 204
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from django.db import transaction
from django.utils import timezone

from pubsubpull.exceptions import CannotPark, CannotResend
from pubsubpull.protocol import items, notification
from pubsubpull.publisher import feed
from pubsubpull.publisher.delivery import access, deliver
from pubsubpull.publisher.delivery.models import Attempt, ParkedChange, Subscription
from pubsubpull.publisher.delivery.subscriptions import forget_pending, notify, parsed_filters


def next_change(subscription: Subscription) -> feed.FeedChange | None:
    """The first change the subscription has not had acknowledged, or None."""
    position = feed.Position(subscription.position_txid, subscription.position_id)
    filters = parsed_filters(subscription)
    page = feed.read_from(position, 1, list(subscription.model_labels), filters)
    while not page.changes and page.more:  # past changes its filters skip
        page = feed.read_from(page.next, 1, list(subscription.model_labels), filters)
    return page.changes[0] if page.changes else None


def park(subscription: Subscription, change_id: int, by: str = "") -> tuple[ParkedChange, bool]:
    """Set aside ``change_id``, the subscription's next change, and go on after it.

    Only the next change can be parked: delivery is in order, so skipping
    means stepping over the change it is stopped at. Parking it again
    returns the parked record. Returns ``(parked, created)``; raises
    :class:`CannotPark` with what the next change is.
    """
    with transaction.atomic():
        locked = Subscription.objects.select_for_update().get(pk=subscription.pk)
        existing = ParkedChange.objects.filter(subscription=locked, change_id=change_id).first()
        if existing is not None:
            return existing, False
        change = next_change(locked)
        if change is None:
            raise CannotPark(
                f"Subscription {locked.name!r} has no change waiting: nothing to park."
            )
        if change.id != change_id:
            raise CannotPark(
                f"Only the change subscription {locked.name!r} would send next can be "
                f"parked, and that is change {change.id} ({change.model} {change.pk}), "
                f"not {change_id}."
            )
        # The failed attempts of the batches it led (a replay may have sent
        # it successfully before).
        tried = Attempt.objects.filter(subscription=locked, first_change_id=change.id).exclude(
            status__gte=200, status__lt=300
        )
        attempts = [
            {
                "at": a.at.isoformat(),
                "webhook_id": a.webhook_id,
                "changes": a.changes,
                "status": a.status,
                "error": a.error,
                "response": a.response,
            }
            for a in tried.order_by("at")
        ]
        parked = ParkedChange.objects.create(
            subscription=locked,
            change_id=change.id,
            txid=change.txid,
            model=change.model,
            object_pk="" if change.pk is None else str(change.pk),
            change=change.as_json(),
            attempts=attempts,
            reason=locked.last_error or locked.state_reason,
            parked_by=by,
        )
        # Past it, in order; a worker holding the subscription finds its
        # batch forgotten and does not advance.
        locked.position_txid, locked.position_id = change.txid, change.id
        forget_pending(locked)
        if locked.state in (Subscription.State.BLOCKED, Subscription.State.FAILING):
            locked.state = Subscription.State.ACTIVE
            locked.state_reason = ""
            locked.failures = 0
            locked.failing_since = None
        locked.next_attempt_at = timezone.now()
        locked.wake_requested_at = None
        locked.save(
            update_fields=[
                "position_txid",
                "position_id",
                "pending_batch",
                "pending_txid",
                "pending_id",
                "pending_count",
                "state",
                "state_reason",
                "failures",
                "failing_since",
                "next_attempt_at",
                "wake_requested_at",
                "updated",
            ]
        )
        transaction.on_commit(lambda: notify(locked))
    return parked, True


def resend(parked: ParkedChange, by: str = "") -> ParkedChange:
    """PUT the parked change to the subscription's callback once; the outcome is recorded.

    The attempt is recorded with the subscription's others. A 2xx marks it
    resent (``parked.resent``); anything else leaves it parked to try again.
    Raises :class:`CannotResend` when the owner may not receive it now.
    """
    subscription = parked.subscription
    refusal = access.refusal(subscription.owner, [parked.model])
    if refusal:
        raise CannotResend(refusal)
    secrets = [subscription.secret]
    if subscription.previous_secret_expires and subscription.previous_secret_expires > (
        timezone.now()
    ):
        secrets.append(subscription.previous_secret)
    # The change as it was stored from the feed's item: same keys, same order.
    body = notification.body(
        subscription.name,
        parked.change.get("at", ""),
        f"[{items.dumps(parked.change)}]",
        None,
        parked=True,
    )
    webhook_id = f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    response = deliver.send(
        subscription.callback, body, deliver.signed_headers(secrets, webhook_id, body, now)
    )
    Attempt.objects.create(
        subscription=subscription,
        at=now,
        webhook_id=webhook_id,
        changes=1,
        first_change_id=parked.change_id,
        last_change_id=parked.change_id,
        status=response.status,
        duration=timedelta(seconds=response.duration),
        error=response.error,
        response=response.body,
        worker=f"resend of a parked change{' by ' + by if by else ''}",
    )
    parked.resent_at = now
    parked.resent_status = response.status
    parked.resent_error = response.error
    parked.save(update_fields=["resent_at", "resent_status", "resent_error"])
    return parked
