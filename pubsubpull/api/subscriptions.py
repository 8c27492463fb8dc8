"""Subscriptions over HTTP: ``PUT``, ``GET`` and ``DELETE {prefix}/subscriptions/<name>/``.

A subscription belongs to the caller that created it (a service token, or a
Django user); nobody else sees or changes it, and the same name may be used
by different callers. Validation errors are 400 with a ``fields`` object
saying what was wrong with which field, and nothing is created or changed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.utils import timezone

from .. import feed
from ..delivery import subscriptions
from ..delivery.models import Attempt, Subscription
from .responses import ApiError, endpoint, json_response

MAX_BODY = 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


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
        "batch_size": subscription.batch_size,
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
    if request is not None:
        data["url"] = request.build_absolute_uri()
    return data


def _name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ApiError(
            400,
            "invalid_name",
            "A subscription name is 1 to 100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit.",
        )
    return name


def _body(request) -> Any:
    length = request.headers.get("Content-Length") or "0"
    if not length.isdigit() or int(length) > MAX_BODY:
        raise ApiError(400, "body_too_large", f"The body must be at most {MAX_BODY} bytes.")
    body = request.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise ApiError(400, "body_too_large", f"The body must be at most {MAX_BODY} bytes.")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        raise ApiError(
            400,
            "invalid_json",
            'The body must be a JSON object: {"callback": "https://…", "models": ["app.model"]}.',
        ) from None


def _own(caller, name: str) -> Subscription:
    found = Subscription.objects.filter(owner=owner_of(caller), name=name).first()
    if found is None:
        raise ApiError(404, "unknown_subscription", f"You have no subscription named {name!r}.")
    return found


@endpoint("GET")
def collection(request, caller):
    """The caller's subscriptions."""
    owned = Subscription.objects.filter(owner=owner_of(caller)).order_by("name")
    base = request.build_absolute_uri()
    return json_response(
        {"subscriptions": [{**describe(s), "url": f"{base}{s.name}/"} for s in owned]}
    )


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
    data = _body(request)
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


# -- OpenAPI -----------------------------------------------------------------


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _subscription_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Subscription"}}},
    }


_NAME_PARAMETER = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "Your name for the subscription; unique among your subscriptions.",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"},
}

_COMMON = {
    "401": _error("No credentials, or a wrong or revoked token."),
    "403": _error("The caller may not read a model of the subscription."),
}

_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}

SCHEMAS: dict[str, Any] = {
    "SubscriptionRequest": {
        "type": "object",
        "properties": {
            "callback": {
                "type": "string",
                "description": "http(s) URL the changes are PUT to; required to create.",
            },
            "models": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "description": "Model labels; required to create.",
            },
            "batch_size": {"type": "integer", "minimum": 1},
            "start": {
                "type": "string",
                "description": '"now" (default), "beginning", or a feed cursor.',
            },
            "rotate_secret": {"type": "boolean"},
        },
        "additionalProperties": False,
    },
    "Subscription": {
        "type": "object",
        "required": ["name", "callback", "models", "state", "position", "lag"],
        "properties": {
            "name": {"type": "string"},
            "url": {"type": "string", "format": "uri"},
            "callback": {"type": "string"},
            "models": {"type": "array", "items": {"type": "string"}},
            "batch_size": {"type": "integer"},
            "state": {"enum": ["active", "failing", "disabled", "paused"]},
            "state_reason": {"type": "string"},
            "position": {
                "type": "string",
                "description": "The feed cursor reached: every change of its models up to "
                "it was acknowledged (or came before start). It also moves over stretches "
                "without changes of its models, so it is not a particular change's cursor.",
            },
            "lag": {
                "type": "object",
                "required": ["changes", "seconds"],
                "properties": {
                    "changes": {"type": "integer"},
                    "seconds": {"type": "number"},
                },
            },
            "delivered": {"type": "integer", "description": "Changes acknowledged."},
            "failures": {
                "type": "integer",
                "description": "Failed attempts in a row since the last success.",
            },
            "failing_since": {
                **_NULLABLE_TIME,
                "description": "When the current failure streak began; null when not failing.",
            },
            "next_attempt_at": {
                **_NULLABLE_TIME,
                "description": "The earliest time of the next attempt (after a failure: "
                "the end of the backoff; in the past: as soon as there is something).",
            },
            "last_success_at": {
                **_NULLABLE_TIME,
                "description": "When a receiver last answered 2xx.",
            },
            "last_error": {"type": "string", "description": "Of the latest failed attempt."},
            "last_attempt": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "properties": {
                            "at": {"type": "string", "format": "date-time"},
                            "webhook_id": {"type": "string"},
                            "changes": {"type": "integer"},
                            "status": {"type": ["integer", "null"]},
                            "duration": {"type": "number"},
                            "error": {"type": "string"},
                        },
                    },
                ]
            },
            "previous_secret_expires": {
                **_NULLABLE_TIME,
                "description": "After rotate_secret: until when the old secret still signs.",
            },
            "created": {"type": "string", "format": "date-time"},
            "secret": {
                "type": "string",
                "description": "The whsec_ signing secret: only when created or rotated.",
            },
        },
    },
}

PATHS: dict[str, Any] = {
    "/subscriptions/": {
        "get": {
            "operationId": "listSubscriptions",
            "summary": "Your subscriptions",
            "responses": {
                "200": {
                    "description": "Every subscription of the caller.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["subscriptions"],
                                "properties": {
                                    "subscriptions": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Subscription"},
                                    }
                                },
                            }
                        }
                    },
                },
                "401": _COMMON["401"],
            },
        }
    },
    "/subscriptions/{name}/": {
        "parameters": [_NAME_PARAMETER],
        "put": {
            "operationId": "subscribe",
            "summary": "Subscribe, or change a subscription (idempotent)",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/SubscriptionRequest"}
                    }
                },
            },
            "responses": {
                "200": _subscription_response("Updated."),
                "201": _subscription_response("Created; the body carries the secret."),
                "400": _error(
                    "Nothing was changed: the body is invalid (invalid_subscription, with "
                    "fields; a model that is not published included), not JSON "
                    "(invalid_json) or over 1 MiB (body_too_large), or the name is invalid."
                ),
                **_COMMON,
            },
        },
        "get": {
            "operationId": "subscription",
            "summary": "State, position, lag and the last attempt",
            "responses": {
                "200": _subscription_response("The subscription."),
                "400": _error("Not a valid subscription name."),
                "401": _COMMON["401"],
                "404": _error("You have no subscription of this name."),
            },
        },
        "delete": {
            "operationId": "unsubscribe",
            "summary": "Unsubscribe",
            "responses": {
                "204": {"description": "Deleted."},
                "400": _error("Not a valid subscription name."),
                "401": _COMMON["401"],
                "404": _error("You have no subscription of this name."),
            },
        },
    },
}
