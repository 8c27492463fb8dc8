"""Create, change and remove subscriptions: what the HTTP API and the admin call.

Example (what ``PUT /subscriptions/billing/`` does for the caller ``token:3``)::

    from pubsubpull.publisher.delivery.subscriptions import subscribe

    result = subscribe("token:3", "billing", {
        "callback": "https://billing.internal/pubsubpull/",
        "models": ["customers.customer"],
    })
    result.secret   # whsec_…, only when created or rotated
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from pubsubpull import conf
from pubsubpull.capture.registry import get_registration
from pubsubpull.exceptions import (
    InvalidFilter,
    InvalidKey,
    InvalidSubscription,
    MissingDependency,
    NotAllowed,
)
from pubsubpull.protocol import cloudevents
from pubsubpull.protocol import filters as filtering
from pubsubpull.publisher import feed
from pubsubpull.publisher.delivery import guard, signing
from pubsubpull.publisher.delivery.models import Attempt, Subscription

FIELDS = {
    "callback",
    "models",
    "batch_size",
    "whole_transactions",
    "start",
    "rotate_secret",
    "format",
    "signature",
    "signing_key",
    "filters",
}


@dataclass
class Subscribed:
    subscription: Subscription
    created: bool
    secret: str | None


def decode_start(start: Any) -> feed.Position:
    """``"now"``, ``"beginning"`` or a feed cursor, as a feed position."""
    if start in (None, "now"):
        return feed.current_position()
    if start == "beginning":
        return feed.START
    if isinstance(start, str):
        try:
            return feed.Position.decode(start)
        except feed.InvalidCursor:
            pass
    raise InvalidSubscription(
        {"start": 'must be "now" (the default), "beginning", or a cursor from the change feed'}
    )


def validate(data: Any, *, creating: bool, existing: Subscription | None = None) -> dict[str, Any]:
    """Check a subscription request body; the cleaned values, or InvalidSubscription.

    ``existing``: the subscription an update changes (its models and filters
    stand where the body leaves them out).
    """
    if not isinstance(data, dict):
        raise InvalidSubscription({"body": "must be a JSON object"})
    errors: dict[str, str] = {}
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        errors["body"] = f"unknown fields {unknown}; expected some of {sorted(FIELDS)}"
    cleaned: dict[str, Any] = {}

    callback = data.get("callback")
    if callback is None and creating:
        errors["callback"] = "is required: the URL notifications are PUT to"
    elif callback is not None:
        if not isinstance(callback, str) or len(callback) > 2000:
            errors["callback"] = "must be a URL (a string of at most 2000 characters)"
        else:
            try:
                guard.check_url(callback)
                cleaned["callback"] = callback
            except guard.CallbackRefused as e:
                errors["callback"] = str(e)

    models = data.get("models")
    if models is None and creating:
        errors["models"] = 'is required: a list of model labels, e.g. ["customers.customer"]'
    elif models is not None:
        if (
            not isinstance(models, list)
            or not models
            or not all(isinstance(m, str) for m in models)
        ):
            errors["models"] = 'must be a non-empty list of model labels, e.g. ["shop.customer"]'
        else:
            labels = [m.lower() for m in models]
            found = [(m, get_registration(m)) for m in labels]
            unknown_models = [m for m, registration in found if registration is None]
            # Delivery follows the main change log; a model stored in another
            # database is recorded in that database's log: pull it instead.
            home, _ = feed.feed_source(None)
            elsewhere = [
                m
                for m, registration in found
                if registration is not None and feed.log_database(registration) != home
            ]
            if unknown_models:
                errors["models"] = f"not published models: {', '.join(unknown_models)}"
            elif elsewhere:
                names = sorted(set(elsewhere))
                errors["models"] = (
                    f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} stored in "
                    "another database than "
                    "this service's change log, and subscriptions deliver from that log only: "
                    "pull its changes instead (GET changes/?models=<label>)"
                )
            else:
                cleaned["models"] = sorted(set(labels))

    size = data.get("batch_size")
    if size is not None:
        largest = conf.max_batch_size()
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= largest:
            errors["batch_size"] = f"must be an integer from 1 to {largest}"
        else:
            cleaned["batch_size"] = size

    if "whole_transactions" in data:
        whole = data["whole_transactions"]
        if not isinstance(whole, bool):
            errors["whole_transactions"] = (
                "must be true (never split a transaction across batches) or false"
            )
        else:
            cleaned["whole_transactions"] = whole
    framing = data.get("format")
    if framing is not None:
        if framing not in cloudevents.FRAMINGS:
            errors["format"] = (
                f"must be one of {list(cloudevents.FRAMINGS)}: pubsubpull's own body "
                "(the default) or a CloudEvents 1.0 JSON batch"
            )
        else:
            cleaned["format"] = framing

    scheme = data.get("signature")
    if scheme is not None:
        if scheme not in signing.SCHEMES:
            errors["signature"] = (
                'must be "v1" (HMAC-SHA256 with a whsec_ secret, the default) or "v1a" '
                "(ed25519: the publisher signs with a secret key, receivers verify with "
                "its whpk_ public key)"
            )
        elif scheme == "v1a" and not signing.available():
            errors["signature"] = (
                "v1a is not available on this publisher: it needs the cryptography "
                "package (pip install 'django-pubsubpull[ed25519]')"
            )
        else:
            cleaned["signature"] = scheme

    key = data.get("signing_key")
    if key is not None and "signature" not in errors:
        if data.get("signature", "v1a") != "v1a":
            errors["signing_key"] = 'is for "signature": "v1a" only (an ed25519 secret key)'
        else:
            try:
                cleaned["signing_key"] = signing.check_secret_key(key)
            except InvalidKey as e:
                errors["signing_key"] = str(e)
            except MissingDependency as e:
                errors["signing_key"] = f"v1a is not available on this publisher: {e}"

    rotate = data.get("rotate_secret", False)
    if not isinstance(rotate, bool):
        errors["rotate_secret"] = "must be true or false"
    cleaned["rotate_secret"] = rotate

    if "start" in data:
        try:
            cleaned["start"] = decode_start(data["start"])
        except InvalidSubscription as e:
            errors.update(e.errors)

    # Filters are checked against the models followed (given now, or kept).
    followed = cleaned.get("models") or (existing.model_labels if existing else None)
    given = data.get("filters") if "filters" in data else None
    kept = existing.filters if existing is not None and "filters" not in data else None
    if followed and "models" not in errors and (given or kept):
        try:
            parsed = feed.parse_filters(given if "filters" in data else kept, followed)
            cleaned["filters"] = filtering.as_json(parsed)
        except InvalidFilter as e:
            errors[e.field] = (
                e.message
                if "filters" in data
                else f"{e.message} (the filters kept from before: send filters too)"
            )
    elif "filters" in data and not given:
        cleaned["filters"] = {}
    if errors:
        raise InvalidSubscription(errors)
    return cleaned


def subscribe(
    owner: str, name: str, data: Any, may_read: Callable[[str], bool] | None = None
) -> Subscribed:
    """Create the subscription ``name`` of ``owner``, or update it to match ``data``.

    Idempotent: the same request twice leaves one subscription as it was
    after the first. ``start`` only applies when it is given (an update
    without it keeps the position). A disabled or failing subscription is
    retried at once, resuming where it stopped (so is a blocked or forbidden
    one, access checked again). Raises InvalidSubscription,
    or NotAllowed when ``may_read`` refuses one of the models.
    """
    with transaction.atomic():
        existing = Subscription.objects.select_for_update().filter(owner=owner, name=name).first()
        cleaned = validate(data, creating=existing is None, existing=existing)
        refused = [m for m in cleaned.get("models", []) if may_read and not may_read(m)]
        if refused:
            raise NotAllowed(f"You may not read {', '.join(refused)}, so you cannot subscribe.")
        if (
            "signing_key" in cleaned
            and "signature" not in cleaned
            and (existing is None or existing.signature != "v1a")
        ):
            raise InvalidSubscription(
                {"signing_key": 'is for "signature": "v1a" only (an ed25519 secret key)'}
            )
        secret = None
        if existing is None:
            start = cleaned.get("start") or feed.current_position()
            scheme = cleaned.get("signature", "v1")
            key = _new_key(scheme, cleaned)
            subscription = Subscription.objects.create(
                owner=owner,
                name=name,
                callback=cleaned["callback"],
                model_labels=cleaned["models"],
                filters=cleaned.get("filters", {}),
                batch_size=cleaned.get("batch_size", conf.batch_size()),
                whole_transactions=cleaned.get("whole_transactions", False),
                position_txid=start.txid,
                position_id=start.id,
                secret=key,
                signature=scheme,
                framing=cleaned.get("format", "pubsubpull"),
                next_attempt_at=timezone.now(),
            )
            secret = key if scheme == "v1" else None  # a secret key never leaves
            created = True
        else:
            subscription, created = existing, False
            if "callback" in cleaned:
                subscription.callback = cleaned["callback"]
            if "batch_size" in cleaned:
                subscription.batch_size = cleaned["batch_size"]
            if "whole_transactions" in cleaned:
                subscription.whole_transactions = cleaned["whole_transactions"]
            moved = False
            if "models" in cleaned and cleaned["models"] != sorted(subscription.model_labels):
                subscription.model_labels = cleaned["models"]
                moved = True
            if "filters" in cleaned and cleaned["filters"] != subscription.filters:
                subscription.filters = cleaned["filters"]
                moved = True
            if "start" in cleaned:
                subscription.position_txid = cleaned["start"].txid
                subscription.position_id = cleaned["start"].id
                moved = True
            if moved:  # the batch in flight no longer matches
                forget_pending(subscription)
            if "format" in cleaned:
                subscription.framing = cleaned["format"]
            scheme = cleaned.get("signature", subscription.signature)
            new_key = cleaned.get("signing_key")
            if (
                cleaned["rotate_secret"]
                or scheme != subscription.signature
                or (new_key is not None and new_key != subscription.secret)
            ):
                # A switch of scheme is a rotation too: the old key keeps
                # signing beside the new one for SECRET_GRACE.
                key = _new_key(scheme, cleaned)
                subscription.previous_secret = subscription.secret
                subscription.previous_secret_expires = timezone.now() + timedelta(
                    seconds=conf.secret_grace()
                )
                subscription.secret, subscription.signature = key, scheme
                secret = key if scheme == "v1" else None
            if subscription.state in _RETRIED_ON_PUT:
                resume(subscription, save=False)
            subscription.save()
        transaction.on_commit(lambda: notify(subscription))
    return Subscribed(subscription, created, secret)


def _new_key(scheme: str, cleaned: dict[str, Any]) -> str:
    """A new signing key of ``scheme``: the one given (v1a), or a fresh one."""
    if scheme == "v1a":
        return cleaned.get("signing_key") or signing.new_secret_key()
    return signing.new_secret()


def public_key(subscription: Subscription) -> str | None:
    """The whpk_ key a v1a subscription's notifications verify with; None for v1."""
    if subscription.signature != "v1a":
        return None
    return signing.public_key(subscription.secret)


# A PUT by the owner retries these at once (a forbidden one has its access
# checked again before anything is sent).
_RETRIED_ON_PUT = {
    Subscription.State.DISABLED,
    Subscription.State.FAILING,
    Subscription.State.BLOCKED,
    Subscription.State.FORBIDDEN,
}


def forget_pending(subscription: Subscription) -> None:
    subscription.pending_batch = ""
    subscription.pending_txid = subscription.pending_id = None
    subscription.pending_count = 0


def resume(subscription: Subscription, save: bool = True) -> None:
    """Deliver again from where it stopped, at once (after a pause, 410 or a failure streak)."""
    subscription.state = Subscription.State.ACTIVE
    subscription.state_reason = ""
    subscription.failures = 0
    subscription.failing_since = None
    subscription.next_attempt_at = timezone.now()
    subscription.wake_requested_at = None  # whatever woke it before found it stopped
    if save:
        # Only these fields: a worker may be moving the position meanwhile.
        subscription.save(
            update_fields=[*_STATE_FIELDS, "next_attempt_at", "wake_requested_at", "updated"]
        )
        notify(subscription)


_STATE_FIELDS = ["state", "state_reason", "failures", "failing_since"]
_POSITION_FIELDS = ["position_txid", "position_id", "pending_batch", "pending_txid"]
_POSITION_FIELDS += ["pending_id", "pending_count"]


def pause(subscription: Subscription, reason: str = "Paused by an operator.") -> None:
    subscription.state = Subscription.State.PAUSED
    subscription.state_reason = reason
    subscription.save(update_fields=["state", "state_reason", "updated"])


def replay(subscription: Subscription, position: feed.Position) -> None:
    """Deliver again from ``position`` (a cursor or a point in time, see the admin)."""
    subscription.position_txid, subscription.position_id = position.txid, position.id
    forget_pending(subscription)
    # A worker holding it now finds its batch forgotten and does not advance.
    subscription.save(update_fields=[*_POSITION_FIELDS, "updated"])
    notify(subscription)


def notify(subscription: Subscription) -> None:
    """Wake the workers for this subscription now rather than at the next sweep."""
    feed.notify(subscription.model_labels)


def parsed_filters(subscription: Subscription) -> filtering.Filters:
    """The subscription's filters, checked against its models' published fields now.

    Raises InvalidFilter when a registration changed under them (a field no
    longer published): delivery then stops the subscription and says why.
    """
    if not subscription.filters:
        return {}
    return feed.parse_filters(subscription.filters, subscription.model_labels)


def pending(subscription: Subscription) -> dict[str, Any] | None:
    """The batch sent but not acknowledged: its webhook-id, its changes, how often tried."""
    if not subscription.pending_batch:
        return None
    position = feed.Position(subscription.position_txid, subscription.position_id)
    try:
        changes = feed.read_from(
            position,
            subscription.pending_count,
            list(subscription.model_labels),
            parsed_filters(subscription),
        ).changes
    except (feed.CursorExpired, LookupError, InvalidFilter):  # pruned, or no longer published
        changes = []
    tries = Attempt.objects.filter(subscription=subscription, webhook_id=subscription.pending_batch)
    return {
        "webhook_id": subscription.pending_batch,
        "changes": [c.id for c in changes],
        "attempts": tries.count(),
    }


def lag(subscription: Subscription) -> dict[str, Any]:
    """How far behind the subscription is: changes not yet acknowledged, and seconds.

    Every change of its models past its position counts, whether or not its
    filters will serve it: delivery moves the position past the ones they skip.
    """
    position = feed.Position(subscription.position_txid, subscription.position_id)
    count, oldest = feed.backlog(position, subscription.model_labels)
    seconds = (timezone.now() - oldest).total_seconds() if oldest else 0.0
    return {"changes": count, "seconds": round(max(seconds, 0.0), 3)}


def oldest_needed_position() -> feed.Position | None:
    """The oldest feed position any subscription still needs, or None without any.

    Pruning the change log must keep every change after it: a disabled
    subscription keeps its backlog too, to resume in order when re-enabled.
    """
    oldest = (
        Subscription.objects.order_by("position_txid", "position_id")
        .values_list("position_txid", "position_id")
        .first()
    )
    return None if oldest is None else feed.Position(*oldest)
