"""The OpenAPI 3.1 document of the pull API, built from the registrations.

Each published model gets its own instances paths, so the document states
exactly which fields (and of which JSON types) each model publishes. A test
validates real responses against it, and a schemathesis run fuzzes it.
"""

from __future__ import annotations

import re
from typing import Any

from django.db import models

from pubsubpull import __version__, conf
from pubsubpull.capture.registry import Registration, get_registration
from pubsubpull.publisher.snapshot import MAX_PARTS

_STRING_FIELDS = (
    models.CharField,
    models.TextField,
    models.DateField,
    models.TimeField,
    models.DurationField,
    models.GenericIPAddressField,
    models.BinaryField,
)


def _value_schema(field: models.Field) -> dict[str, Any]:
    if field.is_relation and field.target_field is not None:
        return _value_schema(field.target_field)
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
        "required": registration.published_columns,
        "additionalProperties": False,
    }


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


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
        "schema": {"type": "integer", "minimum": 1, "maximum": conf.get("MAX_PAGE_SIZE")},
    }


def _instances_paths(registration: Registration) -> dict[str, Any]:
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
    }, {
        name: {
            "type": "object",
            "required": ["pk", "url", "sequence", "fields"],
            "properties": {
                "model": {"type": "string"},
                "pk": pk_schema,
                "url": {"type": "string", "format": "uri"},
                "sequence": {
                    "type": ["integer", "null"],
                    "description": "Id of the row's newest retained change.",
                },
                "fields": _fields_schema(registration),
            },
            "additionalProperties": False,
        }
    }


_CHANGE = {
    "type": "object",
    "required": ["id", "cursor", "model", "pk", "op", "at", "sequence", "old", "new", "request"],
    "properties": {
        "id": {"type": "integer"},
        "cursor": {"type": "string"},
        "model": {"type": "string"},
        "pk": {},
        "op": {"enum": ["insert", "update", "delete", "truncate"]},
        "at": {"type": "string", "format": "date-time"},
        "sequence": {
            "type": "integer",
            "description": "Orders the changes of one object (it follows the object's "
            "commits): keep the highest, drop an event with a lower one.",
        },
        "old": {"type": ["object", "null"]},
        "new": {"type": ["object", "null"]},
        "request": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["user", "method", "path"],
                    "properties": {
                        "user": {"type": ["integer", "string", "null"]},
                        "method": {"type": "string"},
                        "path": {"type": "string"},
                    },
                },
            ]
        },
    },
    "additionalProperties": False,
}

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
                    "inside a transaction). A transaction that took its id first is "
                    "served first even if it committed later, so a child row can come "
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
                    {
                        "name": "wait",
                        "in": "query",
                        "description": "Seconds to long-poll when caught up.",
                        "schema": {
                            "type": "number",
                            "minimum": 0,
                            "maximum": conf.get("MAX_WAIT"),
                        },
                    },
                ],
                "responses": {
                    "200": {
                        "description": "A page of changes; empty means caught up.",
                        "headers": {"Link": {"schema": {"type": "string"}}},
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
                                    },
                                    "additionalProperties": False,
                                }
                            }
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
    schemas: dict[str, Any] = {"Change": _CHANGE, "Error": _ERROR}
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
    from pubsubpull.publisher.api import (
        subscriptions,  # the subscription endpoints describe themselves
    )

    paths.update(subscriptions.PATHS)
    schemas.update(subscriptions.SCHEMAS)
    for label in labels:
        registration = get_registration(label)
        if registration is None:
            continue
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
