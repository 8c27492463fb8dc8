"""Subscriptions over HTTP: ``PUT``, ``GET`` and ``DELETE {prefix}/subscriptions/<name>/``.

And their parked changes (the dead-letter list), ``GET
{prefix}/subscriptions/<name>/parked/`` and ``PUT``, ``GET``, ``DELETE
{prefix}/subscriptions/<name>/parked/<change_id>/``: park the change a
subscription is stopped at so the rest goes on, send it again, forget it.

A subscription belongs to the caller that created it (a service token, or a
Django user); nobody else sees or changes it, and the same name may be used
by different callers. Validation errors are 400 with a ``fields`` object
saying what was wrong with which field, and nothing is created or changed.
"""

from __future__ import annotations

import re
from typing import Any

from django.urls import reverse
from django.utils import timezone

from pubsubpull.publisher import feed
from pubsubpull.publisher.api.responses import ApiError, endpoint, json_body, json_response
from pubsubpull.publisher.delivery import parking, subscriptions
from pubsubpull.publisher.delivery.models import Attempt, ParkedChange, Subscription

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_EXAMPLE = '{"callback": "https://…", "models": ["app.model"]}.'


def owner_of(caller) -> str:
    """The owner key of a caller's subscriptions: ``token:<id>`` or ``user:<pk>``."""
    if caller.token is not None:
        return f"token:{caller.token.pk}"
    if caller.user is not None:
        return f"user:{caller.user.pk}"
    raise ApiError(
        401,
        "not_authenticated",
        "Subscribing needs an identity: send Authorization: Bearer <token> "
        "(manage.py pubsubpull_token create) or log in.",
    )


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def describe(subscription: Subscription, request=None) -> dict[str, Any]:
    """The subscription as GET shows it (never its secret)."""
    last = Attempt.objects.filter(subscription=subscription).order_by("-at").first()
    position = feed.Position(subscription.position_txid, subscription.position_id)
    data = {
        "name": subscription.name,
        "callback": subscription.callback,
        "models": list(subscription.model_labels),
        "filters": subscription.filters or {},
        "batch_size": subscription.batch_size,
        "whole_transactions": subscription.whole_transactions,
        "format": subscription.framing,
        "signature": subscription.signature,
        "public_key": subscriptions.public_key(subscription),
        "state": subscription.state,
        "state_reason": subscription.state_reason,
        "position": position.encode(),
        "lag": subscriptions.lag(subscription),
        "delivered": subscription.delivered,
        "failures": subscription.failures,
        "failing_since": _iso(subscription.failing_since),
        "next_attempt_at": _iso(subscription.next_attempt_at),
        "last_success_at": _iso(subscription.last_success_at),
        "last_error": subscription.last_error,
        "pending": subscriptions.pending(subscription),
        "parked": ParkedChange.objects.filter(subscription=subscription).count(),
        "last_attempt": None
        if last is None
        else {
            "at": last.at.isoformat(),
            "webhook_id": last.webhook_id,
            "changes": last.changes,
            "status": last.status,
            "duration": round(last.duration.total_seconds(), 6),
            "error": last.error,
        },
        "previous_secret_expires": _iso(
            subscription.previous_secret_expires
            if subscription.previous_secret_expires
            and subscription.previous_secret_expires > timezone.now()
            else None
        ),
        "created": subscription.created.isoformat(),
    }
    if request is not None:  # its own URL, whatever query the request had
        path = reverse("pubsubpull:subscription", args=[subscription.name])
        data["url"] = request.build_absolute_uri(path)
    return data


def _name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ApiError(
            400,
            "invalid_name",
            "A subscription name is 1 to 100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit.",
        )
    return name


def _own(caller, name: str) -> Subscription:
    found = Subscription.objects.filter(owner=owner_of(caller), name=name).first()
    if found is None:
        raise ApiError(404, "unknown_subscription", f"You have no subscription named {name!r}.")
    return found


@endpoint("GET")
def collection(request, caller):
    """The caller's subscriptions."""
    owned = Subscription.objects.filter(owner=owner_of(caller)).order_by("name")
    return json_response({"subscriptions": [describe(s, request) for s in owned]})


@endpoint("GET", "PUT", "DELETE")
def subscription(request, caller, name):
    """Subscribe (PUT, idempotent), inspect (GET), unsubscribe (DELETE)."""
    name = _name(name)
    if request.method == "GET":
        return json_response(describe(_own(caller, name), request))
    if request.method == "DELETE":
        _own(caller, name).delete()
        response = json_response(None, 204)
        response.content = b""
        del response.headers["Content-Type"]
        return response

    owner = owner_of(caller)
    data = json_body(request, _EXAMPLE)
    try:
        result = subscriptions.subscribe(owner, name, data, may_read=caller.can_read)
    except subscriptions.InvalidSubscription as exc:
        raise ApiError(400, "invalid_subscription", str(exc), fields=exc.errors) from None
    except subscriptions.NotAllowed as exc:
        raise ApiError(403, "permission_denied", str(exc)) from None
    body = describe(result.subscription, request)
    if result.secret is not None:
        body["secret"] = result.secret
    return json_response(body, 201 if result.created else 200)


def describe_parked(parked: ParkedChange, url: str | None = None) -> dict[str, Any]:
    """A parked change as GET shows it."""
    data = {
        "change_id": parked.change_id,
        "cursor": feed.Position(parked.txid, parked.change_id).encode(),
        "model": parked.model,
        "pk": parked.change.get("pk"),
        "reason": parked.reason,
        "parked_at": parked.parked_at.isoformat(),
        "parked_by": parked.parked_by,
        "attempts": parked.attempts,
        "change": parked.change,
        "resent": parked.resent,
        "resent_at": _iso(parked.resent_at),
        "resent_status": parked.resent_status,
        "resent_error": parked.resent_error,
    }
    if url is not None:
        data["url"] = url
    return data


@endpoint("GET")
def parked_collection(request, caller, name):
    """The subscription's parked changes, in feed order."""
    subscription = _own(caller, _name(name))
    base = request.build_absolute_uri(request.path)
    return json_response(
        {
            "parked": [
                describe_parked(p, f"{base}{p.change_id}/")
                for p in ParkedChange.objects.filter(subscription=subscription)
            ]
        }
    )


_ACTIONS = ("park", "resend")


def _action(request) -> str:
    data = json_body(request, '{"action": "park"} or {"action": "resend"}.')
    if not isinstance(data, dict) or set(data) != {"action"} or data["action"] not in _ACTIONS:
        raise ApiError(
            400,
            "invalid_action",
            'The body must be {"action": "park"} (set the change aside and go on) or '
            '{"action": "resend"} (send a parked change to the callback again).',
        )
    return data["action"]


@endpoint("GET", "PUT", "DELETE")
def parked_change(request, caller, name, change_id):
    """Park the next change (PUT park), send a parked one again (PUT resend), see, forget."""
    subscription = _own(caller, _name(name))
    url = request.build_absolute_uri(request.path)
    # Routed as text, so a change id that is not a number is this view's
    # JSON 404, not Django's HTML one.
    number = int(change_id) if change_id.isascii() and change_id.isdigit() else None
    found = (
        ParkedChange.objects.filter(subscription=subscription, change_id=number).first()
        if number is not None and number <= feed.MAX_ID
        else None
    )
    missing = ApiError(
        404, "not_parked", f"Change {change_id} is not parked for subscription {name!r}."
    )
    if request.method == "GET":
        if found is None:
            raise missing
        return json_response(describe_parked(found, url))
    if request.method == "DELETE":
        if found is None:
            raise missing
        found.delete()
        response = json_response(None, 204)
        response.content = b""
        del response.headers["Content-Type"]
        return response

    action = _action(request)
    if action == "resend":
        if found is None:
            raise missing
        try:
            return json_response(describe_parked(parking.resend(found, by=owner_of(caller)), url))
        except parking.CannotResend as exc:
            raise ApiError(403, "permission_denied", str(exc)) from None
    if number is None or number > feed.MAX_ID:
        raise ApiError(409, "not_next_change", f"There is no change {change_id}.")
    try:
        parked, created = parking.park(subscription, number, by=owner_of(caller))
    except parking.CannotPark as exc:
        raise ApiError(409, "not_next_change", str(exc)) from None
    except feed.CursorExpired:
        raise ApiError(
            410,
            "cursor_expired",
            "The change log was pruned past this subscription's position: nothing to park. "
            "Take a new snapshot and subscribe again with start set to its feed_position.",
        ) from None
    return json_response(describe_parked(parked, url), 201 if created else 200)
