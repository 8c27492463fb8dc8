"""The two items on the wire: a change (of the feed and of notifications) and an instance.

Each item is defined once here, as an ordered tuple of :class:`Key`: its name,
its JSON Schema, and how its value is written as JSON text. Everything else
is made from that definition:

- the change item as a dict (:func:`change_item`) and as JSON text
  (:func:`change_item_json`, the fast path every feed page and delivery
  uses: the ``old`` and ``new`` JSON that PostgreSQL rendered is spliced in,
  not decoded and encoded again);
- the instance item as a SQL expression (:func:`instance_item_sql`):
  snapshots render each row's item in PostgreSQL, so a page costs no Python
  per row;
- the ``Change`` and instance schemas of the OpenAPI document
  (:func:`change_schema`, :func:`instance_schema`).

::

    from pubsubpull.protocol import items

    items.change_item(7, cursor, "shop.customer", 3, "update", at, old, new, None)
    # {"id": 7, "cursor": ..., "model": "shop.customer", "pk": 3, "op": "update", ...}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# One encoder, made once: json.dumps(value, ensure_ascii=False,
# separators=(",", ":")) builds a new one on every call.
dumps: Callable[[Any], str] = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _quoted(text: str) -> str:
    """A string known to need no escaping (a cursor, an op) as JSON."""
    return '"' + text + '"'


def _as_is(text: str) -> str:
    """A value that is JSON text already (old and new as PostgreSQL rendered them)."""
    return text


@dataclass(frozen=True)
class Key:
    """One key of an item: its name, its JSON Schema, how its value is written as JSON."""

    name: str
    schema: dict[str, Any] = field(default_factory=dict)
    text: Callable[[Any], str] = dumps


# -- The change item ----------------------------------------------------------

OPS = ("insert", "update", "delete", "truncate")

CHANGE: tuple[Key, ...] = (
    Key("id", {"type": "integer"}, str),
    Key("cursor", {"type": "string"}, _quoted),
    Key("model", {"type": "string"}),
    Key("pk", {}),
    Key("op", {"enum": list(OPS)}, _quoted),
    Key("at", {"type": "string", "format": "date-time"}),
    Key(
        "sequence",
        {
            "type": "integer",
            "description": "Orders the changes of one object (it follows the object's "
            "commits): keep the highest, drop an event with a lower one.",
        },
        str,
    ),
    Key("old", {"type": ["object", "null"]}, _as_is),
    Key("new", {"type": ["object", "null"]}, _as_is),
    Key(
        "request",
        {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["user", "method", "path"],
                    "properties": {
                        "user": {"type": ["integer", "string", "null"]},
                        "method": {"type": "string"},
                        "path": {"type": "string"},
                        "traceparent": {
                            "type": "string",
                            "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                            "description": "The W3C traceparent of the request or job "
                            "that made the change, when it had a valid one.",
                        },
                        "tracestate": {
                            "type": "string",
                            "maxLength": 512,
                            "description": "The W3C tracestate that came with it, if any.",
                        },
                    },
                },
            ]
        },
    ),
)

CHANGE_KEYS = tuple(key.name for key in CHANGE)
_CHANGE_TEXT = "{" + ",".join(f'"{name}":%s' for name in CHANGE_KEYS) + "}"
_CHANGE_ENCODERS = tuple(key.text for key in CHANGE)


def _change_values(id, cursor, model, pk, op, at, old, new, request) -> tuple:
    """The change item's values, in the order of :data:`CHANGE`."""
    return (id, cursor, model, pk, op, at, id, old, new, request)


def change_item(
    id: int,
    cursor: str,
    model: str,
    pk: Any,
    op: str,
    at: str,
    old: dict[str, Any] | None,
    new: dict[str, Any] | None,
    request: dict[str, Any] | None,
) -> dict[str, Any]:
    """A change as a JSON-ready dict: the keys of :data:`CHANGE`, in order.

    ``sequence`` is the change's ``id``: a row's change ids follow its commits.
    """
    values = _change_values(id, cursor, model, pk, op, at, old, new, request)
    return dict(zip(CHANGE_KEYS, values, strict=True))


def change_item_json(
    id: int,
    cursor: str,
    model: str,
    pk: Any,
    op: str,
    at: str,
    old_json: str,
    new_json: str,
    request: dict[str, Any] | None,
) -> str:
    """``json.dumps(change_item(...))`` (compact, not ASCII-escaped), with ``old``
    and ``new`` given as their JSON text and spliced in as they are."""
    values = _change_values(id, cursor, model, pk, op, at, old_json, new_json, request)
    return _CHANGE_TEXT % tuple([text(v) for text, v in zip(_CHANGE_ENCODERS, values, strict=True)])


def request_item(
    user: Any,
    method: str | None,
    path: str | None,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> dict[str, Any] | None:
    """A change's ``request``: who made it and how, or None outside a web request.

    ``traceparent`` and ``tracestate`` (W3C Trace Context) are there only
    when set (the request row stores them empty otherwise).
    """
    if method is None:
        return None
    item = {"user": user, "method": method, "path": path}
    if traceparent:
        item["traceparent"] = traceparent
        if tracestate:
            item["tracestate"] = tracestate
    return item


def change_schema() -> dict[str, Any]:
    """The JSON Schema of a change item (the OpenAPI ``Change``)."""
    return {
        "type": "object",
        "required": list(CHANGE_KEYS),
        "properties": {key.name: dict(key.schema) for key in CHANGE},
        "additionalProperties": False,
    }


# -- The instance item --------------------------------------------------------

INSTANCE: tuple[Key, ...] = (
    Key("pk"),  # the model's primary key schema: see instance_schema
    Key("url", {"type": "string", "format": "uri"}),
    Key(
        "sequence",
        {"type": ["integer", "null"], "description": "Id of the row's newest retained change."},
    ),
    Key("fields"),  # the model's published fields: see instance_schema
)

INSTANCE_KEYS = tuple(key.name for key in INSTANCE)


class Text(str):
    """Literal JSON text in an :func:`instance_item_sql` value (merged with its neighbours)."""


def _sql_literal(text: str) -> str:
    # For a statement with %(name)s parameters: % doubled too.
    return "'" + text.replace("'", "''").replace("%", "%%") + "'"


def instance_item_sql(**values: str | tuple[str, ...]) -> str:
    """A SQL text expression rendering an instance item, keys in :data:`INSTANCE` order.

    Each keyword is a key of the item and the SQL giving that key's value as
    JSON text: an expression (``pk="t.id::text"``), or a tuple of expressions
    and :class:`Text` pieces, concatenated (``url=(Text('"'), "t.path",
    Text('"'))``). Every key must be given. Literal text is merged into as few
    SQL literals as can be: PostgreSQL concatenates once per ``||``, per row.
    """
    return _item_sql("instance_item_sql", INSTANCE_KEYS, values)


def change_item_sql(**values: str | tuple[str, ...]) -> str:
    """A SQL text expression rendering a change item, keys in :data:`CHANGE` order.

    As :func:`instance_item_sql`: the feed's page statement renders each
    change whole with it, so serving a page costs no Python per change.
    """
    return _item_sql("change_item_sql", CHANGE_KEYS, values)


def _item_sql(function: str, keys: tuple[str, ...], values: dict) -> str:
    if set(values) != set(keys):
        raise TypeError(f"{function}() takes the keys {', '.join(keys)}")
    pieces: list[str] = []
    for n, name in enumerate(keys):
        value = values[name]
        pieces.append(Text(("{" if n == 0 else ",") + f'"{name}":'))
        pieces.extend(value if isinstance(value, tuple) else (value,))
    pieces.append(Text("}"))
    sql: list[str] = []
    text = ""
    for piece in pieces:
        if isinstance(piece, Text):
            text += piece
            continue
        if text:
            sql.append(_sql_literal(text))
            text = ""
        sql.append(piece)
    if text:
        sql.append(_sql_literal(text))
    return " || ".join(sql)


def instance_schema(pk: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of a model's instance item, given its pk's and fields' schemas.

    ``model`` is allowed besides: the single-instance endpoint adds it.
    """
    schemas = {key.name: dict(key.schema) for key in INSTANCE}
    schemas.update(pk=pk, fields=fields)
    return {
        "type": "object",
        "required": list(INSTANCE_KEYS),
        "properties": {"model": {"type": "string"}, **schemas},
        "additionalProperties": False,
    }
