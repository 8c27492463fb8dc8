"""The OpenAPI 3.1 document of the pull and subscription API, built from the registrations.

Each published model gets its own instances paths, so the document states
exactly which fields (and of which JSON types) each model publishes. The
items on the wire, a change and an instance, are described by the protocol's
definitions of them (``pubsubpull.protocol.items``), so the document and what
is served cannot drift apart. A test validates real responses against it, and
a schemathesis run fuzzes it.
"""

from __future__ import annotations

import re
from typing import Any

from django.db import models

from pubsubpull import conf
from pubsubpull.capture.registry import Registration, get_registration
from pubsubpull.protocol import cloudevents, cursor, items
from pubsubpull.protocol import filters as filtering
from pubsubpull.publisher.api import subscriptions
from pubsubpull.publisher.snapshot import MAX_PARTS
from pubsubpull.version import __version__

_STRING_FIELDS = (
    models.CharField,
    models.TextField,
    models.DateField,
    models.TimeField,
    models.DurationField,
    models.GenericIPAddressField,
    models.BinaryField,
)


#: The read-your-writes header of the service's own responses (docs/read-your-writes.rst).
POSITION_HEADER: dict[str, Any] = {
    "description": (
        "On the response of any view of this service to a request that changed "
        "published data: the feed cursor of the request's last change (use it as the "
        "feed's after; a reader at or past it has read every change of the request). "
        "An RFC 8941 list; when the request changed published data in several "
        "databases, one member per database, each with a db parameter naming it. "
        "Absent when the request changed nothing published."
    ),
    "schema": {"type": "string", "examples": ["YzEuOTAxMjMuNDU2"]},
}


def _value_schema(field: models.Field) -> dict[str, Any]:
    target = getattr(field, "target_field", None)  # a foreign key's: the key it holds
    if field.is_relation and target is not None:
        return _value_schema(target)
    if isinstance(field, models.BooleanField):
        return {"type": ["boolean"]}
    if isinstance(field, models.IntegerField):
        return {"type": ["integer"]}
    if isinstance(field, models.DecimalField | models.FloatField):
        # NaN and the infinities are rendered as strings by to_jsonb.
        return {"type": ["number", "string"]}
    if isinstance(field, models.UUIDField):
        return {"type": ["string"], "format": "uuid"}
    if isinstance(field, _STRING_FIELDS):
        return {"type": ["string"]}
    return {}  # JSONField, arrays, ranges, custom types: any JSON value


def field_schema(field: models.Field) -> dict[str, Any]:
    """The JSON Schema of a column's value as ``to_jsonb`` renders it."""
    schema = _value_schema(field)
    if "type" not in schema:
        return schema
    types = schema["type"] + (["null"] if field.null else [])
    schema["type"] = types[0] if len(types) == 1 else types
    return schema


def _fields_schema(registration: Registration) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {f.column: field_schema(f) for f in registration.published_fields},
        # Every published field, unless filters ask for fewer: the pk always.
        "required": [registration.pk_column],
        "description": "Every published field, or those the request's filters name "
        "(fields), and the primary key.",
        "additionalProperties": False,
    }


def _response(schema: str, description: str) -> dict[str, Any]:
    """A JSON response whose body is the component schema ``schema``."""
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _error(description: str) -> dict[str, Any]:
    return _response("Error", description)


_ERRORS = {
    "400": _error("A parameter is malformed; detail says which and why."),
    "401": _error("No credentials, or a wrong or revoked token."),
    "403": _error("The caller may not read this model."),
}


def _limit() -> dict[str, Any]:
    return {
        "name": "limit",
        "in": "query",
        "description": "Items per page.",
        "schema": {"type": "integer", "minimum": 1, "maximum": conf.max_page_size()},
    }


def _filters_parameter(description: str) -> dict[str, Any]:
    return {
        "name": "filters",
        "in": "query",
        "description": description,
        # A JSON value in the query string (OpenAPI 3.1 content, not schema).
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Filters"}}},
    }


def _instances_paths(registration: Registration) -> tuple[dict[str, Any], dict[str, Any]]:
    label = registration.label
    name = label.replace(".", "_")
    pk_schema = field_schema(registration.model._meta.pk)
    instance_ref = {"$ref": f"#/components/schemas/{name}"}
    return {
        f"/models/{label}/instances/": {
            "get": {
                "operationId": f"list_{name}",
                "summary": f"Snapshot of {label}, in keyset pages by primary key",
                "tags": [label],
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "description": "The page token from the previous page's next link.",
                        "schema": {"type": "string"},
                    },
                    _limit(),
                    {
                        "name": "parts",
                        "in": "query",
                        "description": (
                            "First page only: split the primary keys into up to this many "
                            "ranges to read in parallel. This page and its next links are the "
                            "first range; parts lists the first pages of the others."
                        ),
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PARTS},
                    },
                    _filters_parameter(
                        "Only the rows matching its where, with its fields (JSON, see the "
                        "Filters schema; changed applies to the feed). The next, parts and "
                        "changes links keep the filters, so a filtered copy starts right."
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "A page; the first also has feed_position.",
                        "headers": {
                            "Link": {
                                "description": 'RFC 8288 rel="next" link, unless last.',
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["model", "next", "instances"],
                                    "properties": {
                                        "model": {"const": label},
                                        "feed_position": {"type": "string"},
                                        "changes": {"type": "string", "format": "uri"},
                                        "next": {"type": ["string", "null"], "format": "uri"},
                                        "instances": {"type": "array", "items": instance_ref},
                                        "parts": {
                                            "type": "array",
                                            "items": {"type": "string", "format": "uri"},
                                        },
                                    },
                                    "additionalProperties": False,
                                }
                            }
                        },
                    },
                    **_ERRORS,
                },
            }
        },
        f"/models/{label}/instances/{{pk}}/": {
            "get": {
                "operationId": f"get_{name}",
                "summary": f"One {label}",
                "tags": [label],
                "parameters": [
                    {"name": "pk", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The instance, with an ETag.",
                        "headers": {"ETag": {"schema": {"type": "string"}}},
                        "content": {
                            "application/json": {
                                "schema": {
                                    "allOf": [
                                        instance_ref,
                                        {
                                            "type": "object",
                                            "required": ["model"],
                                            "properties": {"model": {"const": label}},
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "304": {"description": "If-None-Match matched: your copy is current."},
                    "404": _error("No such instance."),
                    **_ERRORS,
                },
            }
        },
    }, {name: items.instance_schema(pk_schema, _fields_schema(registration))}


_ERROR = {
    "type": "object",
    "required": ["status", "error", "detail"],
    "properties": {
        "status": {"type": "integer"},
        "error": {"type": "string", "description": "A code, e.g. invalid_limit."},
        "detail": {"type": "string", "description": "What was wrong, and what to do."},
        "fields": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "invalid_subscription: what is wrong with which field.",
        },
        "snapshot": {
            "type": "object",
            "additionalProperties": {"type": "string", "format": "uri"},
            "description": "cursor_expired: each model's instances URL to re-snapshot from.",
        },
    },
}


# -- Subscriptions ---------------------------------------------------------------


def _subscription_response(description: str) -> dict[str, Any]:
    return _response("Subscription", description)


_NAME_PARAMETER = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "Your name for the subscription; unique among your subscriptions.",
    "schema": {"type": "string", "pattern": f"^{subscriptions.NAME.pattern}$"},
}

_SUBSCRIPTION_ERRORS = {
    "401": _error("No credentials, or a wrong or revoked token."),
    "403": _error("The caller may not read a model of the subscription."),
}

_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}

SUBSCRIPTION_SCHEMAS: dict[str, Any] = {
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
            "whole_transactions": {
                "type": "boolean",
                "description": "Never split a transaction's changes across batches: a "
                "batch holds whole transactions, one larger than batch_size goes alone, "
                "and a refused batch is narrowed to whole transactions (one still "
                "refused blocks the subscription, and parking it parks all its changes). "
                "Default false; left out of an update, kept.",
            },
            "start": {
                "type": "string",
                "description": '"now" (default), "beginning", or a feed cursor.',
            },
            "rotate_secret": {
                "type": "boolean",
                "description": "A new secret (v1) or key pair (v1a); the old one keeps "
                "signing beside it for SECRET_GRACE.",
            },
            "format": {
                "enum": ["pubsubpull", "cloudevents"],
                "description": "How notifications look: pubsubpull's body (the default) or "
                "a CloudEvents 1.0 JSON batch (application/cloudevents-batch+json). Left out "
                "on an update: unchanged.",
            },
            "signature": {
                "enum": ["v1", "v1a"],
                "description": "Standard Webhooks signature: v1, HMAC-SHA256 with a whsec_ "
                "secret (the default), or v1a, ed25519: the publisher signs with a secret "
                "key, receivers verify with public_key. Changing it rotates the key.",
            },
            "signing_key": {
                "type": "string",
                "pattern": "^whsk_",
                "description": "With signature v1a: the ed25519 secret key to sign with "
                "(whsk_ and base64 of its 32-byte seed, or seed and public key); a new one "
                "is generated when left out. Never shown again.",
            },
            "filters": {
                "oneOf": [{"$ref": "#/components/schemas/Filters"}, {"type": "null"}],
                "description": "Which changes and fields to deliver, per model it follows "
                "(see Filters); null or {} for all. Left out on an update: kept.",
            },
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
            "filters": {
                "$ref": "#/components/schemas/Filters",
                "description": "Its filters in their canonical form (fields by column).",
            },
            "batch_size": {"type": "integer"},
            "whole_transactions": {"type": "boolean"},
            "format": {"enum": ["pubsubpull", "cloudevents"]},
            "signature": {"enum": ["v1", "v1a"]},
            "public_key": {
                "type": ["string", "null"],
                "description": "v1a: the whpk_ ed25519 public key notifications verify with "
                "(null for v1).",
            },
            "state": {"enum": ["active", "failing", "blocked", "forbidden", "disabled", "paused"]},
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
            "pending": {
                "description": "The batch sent but not acknowledged yet, if any.",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["webhook_id", "changes", "attempts"],
                        "properties": {
                            "webhook_id": {"type": "string"},
                            "changes": {"type": "array", "items": {"type": "integer"}},
                            "attempts": {"type": "integer"},
                        },
                    },
                ],
            },
            "parked": {"type": "integer", "description": "How many changes are parked."},
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
                "description": "The whsec_ signing secret (v1): only when created or "
                "rotated. A v1a secret key is never shown.",
            },
        },
    },
}

SUBSCRIPTION_SCHEMAS["ParkedChange"] = {
    "type": "object",
    "required": ["change_id", "cursor", "model", "change", "attempts", "resent"],
    "properties": {
        "change_id": {"type": "integer"},
        "cursor": {"type": "string", "description": "The change's feed position."},
        "model": {"type": "string"},
        "pk": {},
        "reason": {"type": "string", "description": "The last error before it was parked."},
        "parked_at": {"type": "string", "format": "date-time"},
        "parked_by": {"type": "string"},
        "attempts": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "at": {"type": "string", "format": "date-time"},
                    "webhook_id": {"type": "string"},
                    "changes": {"type": "integer"},
                    "status": {"type": ["integer", "null"]},
                    "error": {"type": "string"},
                    "response": {"type": "string"},
                },
            },
        },
        "change": {"type": "object", "description": "The change as it was sent."},
        "resent": {"type": "boolean", "description": "A re-send was acknowledged (2xx)."},
        "resent_at": _NULLABLE_TIME,
        "resent_status": {"type": ["integer", "null"]},
        "resent_error": {"type": "string"},
        "url": {"type": "string", "format": "uri"},
    },
}
SUBSCRIPTION_SCHEMAS["ParkRequest"] = {
    "type": "object",
    "required": ["action"],
    "properties": {
        "action": {
            "enum": ["park", "resend"],
            "description": "park: set the subscription's next change aside and go on; "
            "resend: PUT a parked change to the callback again.",
        }
    },
    "additionalProperties": False,
}


def _parked_response(description: str) -> dict[str, Any]:
    return _response("ParkedChange", description)


_CHANGE_ID_PARAMETER = {
    "name": "change_id",
    "in": "path",
    "required": True,
    "description": "The id of the change (as the feed and notifications give it).",
    "schema": {"type": "integer", "minimum": 0},
}

_NOT_FOUND = _error("You have no subscription of this name, or that change is not parked.")

SUBSCRIPTION_PATHS: dict[str, Any] = {
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
                "401": _SUBSCRIPTION_ERRORS["401"],
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
                    "fields; a model that is not published included), is not UTF-8 JSON, "
                    "nests over 64 levels or holds a NUL or a lone surrogate (invalid_json), "
                    "or the name is invalid."
                ),
                "413": _error("The body is over 1 MiB (body_too_large); nothing was changed."),
                **_SUBSCRIPTION_ERRORS,
            },
        },
        "get": {
            "operationId": "subscription",
            "summary": "State, position, lag and the last attempt",
            "responses": {
                "200": _subscription_response("The subscription."),
                "400": _error("Not a valid subscription name."),
                "401": _SUBSCRIPTION_ERRORS["401"],
                "404": _error("You have no subscription of this name."),
            },
        },
        "delete": {
            "operationId": "unsubscribe",
            "summary": "Unsubscribe",
            "responses": {
                "204": {"description": "Deleted."},
                "400": _error("Not a valid subscription name."),
                "401": _SUBSCRIPTION_ERRORS["401"],
                "404": _error("You have no subscription of this name."),
            },
        },
    },
    "/subscriptions/{name}/parked/": {
        "parameters": [_NAME_PARAMETER],
        "get": {
            "operationId": "parkedChanges",
            "summary": "The subscription's parked changes (its dead-letter list)",
            "responses": {
                "200": {
                    "description": "Every parked change, in feed order.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["parked"],
                                "properties": {
                                    "parked": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/ParkedChange"},
                                    }
                                },
                            }
                        }
                    },
                },
                "400": _error("Not a valid subscription name."),
                "401": _SUBSCRIPTION_ERRORS["401"],
                "404": _error("You have no subscription of this name."),
            },
        },
    },
    "/subscriptions/{name}/parked/{change_id}/": {
        "parameters": [_NAME_PARAMETER, _CHANGE_ID_PARAMETER],
        "put": {
            "operationId": "parkOrResend",
            "summary": "Park the change the subscription is stopped at, or send a parked one again",
            "description": 'With {"action": "park"}: only the next change to deliver can be '
            "parked; the position moves past it and delivery goes on in order. With "
            '{"action": "resend"}: the parked change is PUT to the callback once, signed, with '
            '"parked": true in its data; the outcome is in resent_status.',
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ParkRequest"}}
                },
            },
            "responses": {
                "200": _parked_response("Already parked, or sent again (see resent_status)."),
                "201": _parked_response("Parked; delivery goes on after it."),
                "400": _error("Not a valid name, or not a valid action."),
                "401": _SUBSCRIPTION_ERRORS["401"],
                "403": _error("The subscription's owner may not read the change's model."),
                "404": _NOT_FOUND,
                "409": _error("Not the change the subscription would send next."),
                "410": _error("The change log was pruned past the subscription's position."),
            },
        },
        "get": {
            "operationId": "parkedChange",
            "summary": "A parked change, its attempts and its last re-send",
            "responses": {
                "200": _parked_response("The parked change."),
                "400": _error("Not a valid subscription name."),
                "401": _SUBSCRIPTION_ERRORS["401"],
                "404": _NOT_FOUND,
            },
        },
        "delete": {
            "operationId": "forgetParkedChange",
            "summary": "Forget a parked change (it is never sent again)",
            "responses": {
                "204": {"description": "Forgotten."},
                "400": _error("Not a valid subscription name."),
                "401": _SUBSCRIPTION_ERRORS["401"],
                "404": _NOT_FOUND,
            },
        },
    },
}


def document(labels: list[str], server: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for the models ``labels``, served under ``server``."""
    one = "|".join(re.escape(label) for label in labels) or "(?!)"
    labels_pattern = f"^({one})(,({one}))*$"
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "operationId": "service",
                "summary": "Service document: published models and links",
                "responses": {
                    "200": {
                        "description": "The models this caller may read, and links.",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Service"}}
                        },
                    },
                    "401": _ERRORS["401"],
                },
            }
        },
        "/changes/": {
            "get": {
                "operationId": "changes",
                "summary": "The gap-free change feed",
                "description": (
                    "Changes in transaction-id order, not commit order: no gap, no "
                    "duplicate, each transaction's changes together (a page may end "
                    "inside a transaction, unless whole_transactions is set). A "
                    "transaction that took its id first is served first even if it "
                    "committed later, so a child row can come "
                    "before its parent; one object's changes are ordered by sequence, "
                    "not by their place in the feed. Store the page's cursor and send "
                    "it back as after."
                ),
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "description": "A cursor: a page's cursor, or a snapshot's "
                        "feed_position. Leave out to start at the oldest retained change.",
                        "schema": {"type": "string"},
                    },
                    _limit(),
                    {
                        "name": "models",
                        "in": "query",
                        "description": "Comma-separated model labels, all stored in one "
                        "database (default: the readable models of the main database).",
                        "schema": {"type": "string", "pattern": labels_pattern},
                    },
                    _filters_parameter(
                        "Serve only the changes and fields these filters ask for (JSON, "
                        "see the Filters schema). A filtered page looks at no more than "
                        f"FILTER_SCAN ({conf.filter_scan()}) changes: its cursor moves past "
                        "the ones it skipped, and more says to read on at once. The next "
                        "link keeps the filters."
                    ),
                    {
                        "name": "format",
                        "in": "query",
                        "description": "cloudevents: the page as a CloudEvents 1.0 JSON "
                        "batch (as Accept: application/cloudevents-batch+json asks too); its "
                        "cursor is the Pubsubpull-Cursor header, its next page the Link "
                        "header. Default pubsubpull.",
                        "schema": {"enum": ["pubsubpull", "cloudevents"]},
                    },
                    {
                        "name": "wait",
                        "in": "query",
                        "description": "Seconds to long-poll when caught up.",
                        "schema": {
                            "type": "number",
                            "minimum": 0,
                            "maximum": conf.max_wait(),
                        },
                    },
                    {
                        "name": "whole_transactions",
                        "in": "query",
                        "description": "1 or true: never split a transaction's changes "
                        "across pages. A page then ends at a transaction boundary (it may "
                        "hold fewer than limit changes and not be the last: only an empty "
                        "page means caught up), and a transaction larger than limit comes "
                        "alone, complete. The next link keeps it. Default 0 (false).",
                        "schema": {"type": "string", "enum": ["0", "1", "false", "true"]},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "A page of changes; empty means caught up.",
                        "headers": {
                            "Link": {"schema": {"type": "string"}},
                            "Pubsubpull-Cursor": {
                                "description": "format=cloudevents: the page's cursor.",
                                "schema": {"type": "string"},
                            },
                        },
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["changes", "cursor", "next"],
                                    "properties": {
                                        "changes": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Change"},
                                        },
                                        "cursor": {"type": "string"},
                                        "next": {"type": "string", "format": "uri"},
                                        "more": {
                                            "const": True,
                                            "description": "Only on a filtered page that "
                                            "stopped at its scan bound: fewer changes than "
                                            "limit, yet more to read now from next.",
                                        },
                                    },
                                    "additionalProperties": False,
                                }
                            },
                            cloudevents.BATCH_CONTENT_TYPE: {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/ChangeEvent"},
                                }
                            },
                        },
                    },
                    "410": _error("The log was pruned past the cursor: take a new snapshot."),
                    **_ERRORS,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "401": _ERRORS["401"],
                },
            }
        },
    }
    schemas: dict[str, Any] = {"Change": items.change_schema(), "Error": _ERROR}
    schemas["ChangeEvent"] = cloudevents.schema({"$ref": "#/components/schemas/Change"})
    schemas["Service"] = {
        "type": "object",
        "required": ["service", "version", "models", "links"],
        "properties": {
            "service": {"type": "string"},
            "version": {"type": "string"},
            "models": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["model", "pk", "fields", "instances", "changes"],
                    "properties": {
                        "model": {"type": "string"},
                        "pk": {"type": "string"},
                        "fields": {"type": "array", "items": {"type": "string"}},
                        "instances": {"type": "string", "format": "uri"},
                        "changes": {"type": "string", "format": "uri"},
                        "count": {
                            "type": ["integer", "null"],
                            "description": "Rows, as PostgreSQL's statistics estimate "
                            "them; null when unknown. For progress bars.",
                        },
                    },
                },
            },
            "links": {
                "type": "object",
                "required": ["self", "changes", "subscriptions", "openapi"],
                "additionalProperties": {"type": "string", "format": "uri"},
            },
        },
    }
    paths.update(SUBSCRIPTION_PATHS)
    schemas.update(SUBSCRIPTION_SCHEMAS)
    schemas["Filters"] = filtering.json_schema()
    # The view passes the labels of registrations(): each is published.
    for label in labels:
        registration = get_registration(label)
        assert registration is not None, f"{label!r} is not published"
        more_paths, more_schemas = _instances_paths(registration)
        paths.update(more_paths)
        schemas.update(more_schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "django-pubsubpull",
            "version": __version__,
            "description": "Pull published models: snapshots and a gap-free change feed.",
        },
        "servers": [{"url": server}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            # Not sent by these paths (they change no published data): by the
            # service's own views, for their documents to reference.
            "headers": {cursor.HEADER: POSITION_HEADER},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A service token: manage.py pubsubpull_token create.",
                },
                "session": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
            },
        },
    }
