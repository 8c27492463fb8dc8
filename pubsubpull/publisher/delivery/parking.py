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

A whole-transactions subscription parks and re-sends whole transactions:
parking its next change parks every change of that change's transaction
(one :class:`ParkedChange` each, the position moves past the last), and
re-sending any of them sends them all, in order, in one body.

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

from pubsubpull import tracing
from pubsubpull.exceptions import CannotPark, CannotResend
from pubsubpull.protocol import cloudevents, items, notification
from pubsubpull.publisher import feed, framing
from pubsubpull.publisher.delivery import access, deliver
from pubsubpull.publisher.delivery.models import Attempt, ParkedChange, Subscription
from pubsubpull.publisher.delivery.subscriptions import forget_pending, notify, parsed_filters


def next_change(subscription: Subscription) -> feed.FeedChange | None:
    """The first change the subscription has not had acknowledged, or None."""
    following = next_changes(subscription)
    return following[0] if following else None


def next_changes(subscription: Subscription) -> list[feed.FeedChange]:
    """What parking the next change sets aside: that change, or its whole transaction.

    A whole-transactions subscription parks the whole transaction the next
    change belongs to (its receiver never gets part of one); any other, the
    change alone.
    """
    position = feed.Position(subscription.position_txid, subscription.position_id)
    filters = parsed_filters(subscription)
    labels = list(subscription.model_labels)
    whole = subscription.whole_transactions
    page = feed.read_from(position, 1, labels, filters, whole_transactions=whole)
    while not page.changes and page.more:  # past changes its filters skip
        page = feed.read_from(page.next, 1, labels, filters, whole_transactions=whole)
    return page.changes


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
        following = next_changes(locked)
        change = following[0] if following else None
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
        reason = locked.last_error or locked.state_reason
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
        parked, *_ = ParkedChange.objects.bulk_create(
            ParkedChange(
                subscription=locked,
                change_id=each.id,
                txid=each.txid,
                model=each.model,
                object_pk="" if each.pk is None else str(each.pk),
                change=each.as_json(),
                attempts=attempts,
                reason=reason,
                parked_by=by,
            )
            for each in following
        )
        # Past it (its whole transaction), in order; a worker holding the
        # subscription finds its batch forgotten and does not advance.
        last = following[-1]
        locked.position_txid, locked.position_id = last.txid, last.id
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

    For a whole-transactions subscription, the parked changes of the same
    transaction go together, in order, and each is marked with the outcome.
    """
    subscription = parked.subscription
    together = [parked]
    if subscription.whole_transactions:
        together = list(
            ParkedChange.objects.filter(subscription=subscription, txid=parked.txid).order_by(
                "change_id"
            )
        )
    refusal = access.refusal(subscription.owner, sorted({p.model for p in together}))
    if refusal:
        raise CannotResend(refusal)
    secrets = [subscription.secret]
    if subscription.previous_secret_expires and subscription.previous_secret_expires > (
        timezone.now()
    ):
        secrets.append(subscription.previous_secret)
    # The change as it was stored from the feed's item: same keys, same order.
    texts = [items.dumps(p.change) for p in together]
    content_type = "application/json"
    if subscription.framing == "cloudevents":
        events = [
            framing.event_json(p.change, text, subscription=subscription.name, parked=True)
            for p, text in zip(together, texts, strict=True)
        ]
        body, content_type = ("[" + ",".join(events) + "]").encode(), cloudevents.BATCH_CONTENT_TYPE
    else:
        body = notification.body(
            subscription.name,
            together[-1].change.get("at", ""),
            "[" + ",".join(texts) + "]",
            None,
            parked=True,
        )
    webhook_id = f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    headers = deliver.signed_headers(secrets, webhook_id, body, now, content_type)
    traces = [tracing.request_trace_of(p.change.get("request")) for p in together]
    with tracing.send_span(subscription.name, traces) as trace_headers:
        response = deliver.send(subscription.callback, body, {**headers, **trace_headers})
    Attempt.objects.create(
        subscription=subscription,
        at=now,
        webhook_id=webhook_id,
        changes=len(together),
        first_change_id=together[0].change_id,
        last_change_id=together[-1].change_id,
        status=response.status,
        duration=timedelta(seconds=response.duration),
        error=response.error,
        response=response.body,
        worker=f"resend of a parked change{' by ' + by if by else ''}",
    )
    for each in together:
        each.resent_at = now
        each.resent_status = response.status
        each.resent_error = response.error
        each.save(update_fields=["resent_at", "resent_status", "resent_error"])
        if each.pk == parked.pk:
            parked.resent_at, parked.resent_status = now, response.status
            parked.resent_error = response.error
    return parked
