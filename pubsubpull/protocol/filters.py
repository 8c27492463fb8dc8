"""Filters: which changes of a model a reader wants, and which of their fields.

A subscription (``PUT subscriptions/<name>/``, key ``filters``) and a feed
request (``GET changes/?filters=<JSON>``) may give, per model label::

    {
      "shop.customer": {
        "where": {"country": "NZ", "score__gte": 10,
                  "or": [{"email__endswith": "@example.com"}, {"vip": true}]},
        "changed": ["email", "score"],
        "fields": ["email", "score"]
      }
    }

- ``where``: a row predicate in Django's lookup form on published fields.
  Keys of one object must all hold (AND); ``and`` / ``or`` take a non-empty
  list of such objects, ``not`` one object. A key is a field name, or
  ``<field>__<lookup>`` with the lookups of :data:`LOOKUPS`. A comparison
  on a null (or missing) value is false, so ``not`` of it is true.
- ``changed``: an update is served only when one of these fields changed.
- ``fields``: the published fields to serve (the primary key always).

This module parses and checks a filter into a small tree (:class:`Leaf`,
:class:`All`, :class:`Any_`, :class:`Not`) against the types of the model's
published fields (a :class:`Schema`), and gives the tree's canonical JSON
(:meth:`ModelFilter.as_json`); the publisher's feed compiles the tree to SQL.
It knows no Django model: the publisher hands it the field kinds. Every error
is an :class:`~pubsubpull.exceptions.InvalidFilter` naming where, e.g.
``filters.shop.customer.where.score__gte``.

::

    from pubsubpull.protocol import filters

    schema = filters.Schema(pk="id", kinds={"id": "number", "country": "string"})
    parsed = filters.parse({"shop.customer": {"where": {"country": "NZ"}}},
                           {"shop.customer": schema})
    parsed["shop.customer"].as_json()   # {"where": {"country": "NZ"}}
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pubsubpull.exceptions import InvalidFilter

#: Field kinds, and the lookups each takes.
_ORDERED = ("exact", "in", "gt", "gte", "lt", "lte", "isnull")
LOOKUPS: dict[str, tuple[str, ...]] = {
    "number": _ORDERED,
    "string": (*_ORDERED, "startswith", "endswith", "contains"),
    "boolean": ("exact", "in", "isnull"),
    "date": _ORDERED,
    "datetime": _ORDERED,
    "time": _ORDERED,
    # Anything else (JSON, durations, ranges ...): equality of the JSON value.
    "json": ("exact", "in", "isnull"),
}
ALL_LOOKUPS: tuple[str, ...] = ("exact", "in", "gt", "gte", "lt", "lte", "isnull")
ALL_LOOKUPS += ("startswith", "endswith", "contains")

#: Limits on what a reader may send (an attacker sends filters too).
MAX_DEPTH = 8  # nesting of and / or / not
MAX_TERMS = 64  # lookups in one model's where
MAX_IN = 1000  # values of one ``in``
MAX_STRING = 1000  # characters of one string value
MAX_FIELD = 100  # characters of a field name

BOOLEAN_KEYS = ("and", "or", "not")


@dataclass(frozen=True)
class Schema:
    """What a filter may name: a model's pk column and the kind of each published column."""

    pk: str
    kinds: Mapping[str, str]
    #: Other names of a column (a foreign key's field name for its ``_id`` column).
    aliases: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Leaf:
    """``field__lookup: value``, the value checked and normalised for the field's kind."""

    field: str
    lookup: str
    value: Any
    kind: str

    def as_json(self) -> dict[str, Any]:
        key = self.field if self.lookup == "exact" else f"{self.field}__{self.lookup}"
        return {key: list(self.value) if isinstance(self.value, tuple) else self.value}


@dataclass(frozen=True)
class All:
    """Every child holds (``and``, or the keys of one object)."""

    children: tuple[Node, ...]

    def as_json(self) -> dict[str, Any]:
        return {"and": [child.as_json() for child in self.children]}


@dataclass(frozen=True)
class Any_:
    """At least one child holds (``or``)."""

    children: tuple[Node, ...]

    def as_json(self) -> dict[str, Any]:
        return {"or": [child.as_json() for child in self.children]}


@dataclass(frozen=True)
class Not:
    """The child does not hold (``not``)."""

    child: Node

    def as_json(self) -> dict[str, Any]:
        return {"not": self.child.as_json()}


Node = Leaf | All | Any_ | Not


@dataclass(frozen=True)
class ModelFilter:
    """One model's filter: its row predicate, the fields whose change counts, what to serve."""

    where: Node | None = None
    changed: tuple[str, ...] | None = None
    fields: tuple[str, ...] | None = None  # the pk included

    def as_json(self) -> dict[str, Any]:
        """The canonical JSON form (what a subscription stores and shows)."""
        data: dict[str, Any] = {}
        if self.where is not None:
            data["where"] = self.where.as_json()
        if self.changed is not None:
            data["changed"] = list(self.changed)
        if self.fields is not None:
            data["fields"] = list(self.fields)
        return data

    def leaves(self) -> list[Leaf]:
        found: list[Leaf] = []
        pending: list[Node] = [self.where] if self.where is not None else []
        while pending:
            node = pending.pop()
            if isinstance(node, Leaf):
                found.append(node)
            elif isinstance(node, Not):
                pending.append(node.child)
            else:
                pending.extend(node.children)
        return found


Filters = dict[str, ModelFilter]


def parse(data: Any, schemas: Mapping[str, Schema], path: str = "filters") -> Filters:
    """Check ``data`` (label -> filter) against ``schemas`` (the models read); the filters.

    A label that ``schemas`` does not hold is an error (a filter on a model
    the reader does not follow). ``None`` and ``{}`` mean no filter.
    """
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidFilter(path, 'must be an object of model label to filter, e.g. {"app.model":'
                            ' {"where": {"field": "value"}}}')  # fmt: skip
    parsed: Filters = {}
    for label, spec in data.items():
        where = f"{path}.{label}"
        if label not in schemas:
            raise InvalidFilter(
                where,
                f"{label!r} is not a model read here; filter one of: {', '.join(sorted(schemas))}",
            )
        model_filter = parse_model(spec, schemas[label], where)
        if model_filter != ModelFilter():
            parsed[label] = model_filter
    return parsed


def parse_model(spec: Any, schema: Schema, path: str) -> ModelFilter:
    """One model's ``{"where": ..., "changed": [...], "fields": [...]}``."""
    if not isinstance(spec, dict):
        raise InvalidFilter(path, 'must be an object with "where", "changed" and/or "fields"')
    unknown = sorted(set(spec) - {"where", "changed", "fields"})
    if unknown:
        raise InvalidFilter(
            f"{path}.{unknown[0]}", 'is not a filter key: use "where", "changed" or "fields"'
        )
    where = None
    if spec.get("where") is not None:
        counter = [0]
        where = _node(spec["where"], schema, f"{path}.where", 1, counter)
    changed = _names(spec.get("changed"), schema, f"{path}.changed")
    fields = _names(spec.get("fields"), schema, f"{path}.fields")
    if fields is not None and schema.pk not in fields:
        fields = (schema.pk, *fields)
    return ModelFilter(where, changed, fields)


def _field(name: Any, schema: Schema, path: str) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_FIELD:
        raise InvalidFilter(path, f"must name a published field (one of {_choices(schema)})")
    name = schema.aliases.get(name, name)
    if name not in schema.kinds:
        raise InvalidFilter(
            path, f"{name!r} is not a published field; choose from {_choices(schema)}"
        )
    return name


def _choices(schema: Schema) -> str:
    return ", ".join(sorted(schema.kinds))


def _names(value: Any, schema: Schema, path: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(value) > len(schema.kinds):
        raise InvalidFilter(
            path, f"must be a non-empty list of published fields ({_choices(schema)})"
        )
    names: list[str] = []
    for n, name in enumerate(value):
        name = _field(name, schema, f"{path}[{n}]")
        if name not in names:
            names.append(name)
    return tuple(names)


def _node(value: Any, schema: Schema, path: str, depth: int, counter: list[int]) -> Node:
    if depth > MAX_DEPTH:
        raise InvalidFilter(path, f"nests and / or / not more than {MAX_DEPTH} levels deep")
    if not isinstance(value, dict) or not value:
        raise InvalidFilter(path, 'must be a non-empty object, e.g. {"country": "NZ"}')
    children: list[Node] = []
    for key, item in value.items():
        where = f"{path}.{key}"
        if key in ("and", "or"):
            if not isinstance(item, list) or not item:
                raise InvalidFilter(where, f"{key} takes a non-empty list of objects")
            nodes = tuple(
                _node(child, schema, f"{where}[{n}]", depth + 1, counter)
                for n, child in enumerate(item)
            )
            children.append(
                (All(nodes) if key == "and" else Any_(nodes)) if len(nodes) > 1 else nodes[0]
            )
        elif key == "not":
            children.append(Not(_node(item, schema, where, depth + 1, counter)))
        else:
            counter[0] += 1
            if counter[0] > MAX_TERMS:
                raise InvalidFilter(where, f"a where holds at most {MAX_TERMS} lookups")
            children.append(_leaf(key, item, schema, where))
    return children[0] if len(children) == 1 else All(tuple(children))


def _leaf(key: Any, value: Any, schema: Schema, path: str) -> Leaf:
    if not isinstance(key, str):
        raise InvalidFilter(path, "must be a field name")
    name, _, lookup = key.partition("__")
    lookup = lookup or "exact"
    column = _field(name, schema, path)
    kind = schema.kinds[column]
    if lookup not in LOOKUPS[kind]:
        what = "is not a lookup" if lookup not in ALL_LOOKUPS else f"does not apply to {kind}s"
        raise InvalidFilter(path, f"{lookup!r} {what}; {name} takes {', '.join(LOOKUPS[kind])}")
    if lookup == "isnull":
        if not isinstance(value, bool):
            raise InvalidFilter(path, "isnull takes true or false")
        return Leaf(column, lookup, value, kind)
    if lookup == "exact" and value is None:
        return Leaf(column, "isnull", True, kind)
    if lookup == "in":
        if not isinstance(value, list) or not value or len(value) > MAX_IN:
            raise InvalidFilter(path, f"in takes a list of 1 to {MAX_IN} values")
        values = tuple(_value(v, kind, f"{path}[{n}]") for n, v in enumerate(value))
        return Leaf(column, lookup, values, kind)
    return Leaf(column, lookup, _value(value, kind, path), kind)


def _value(value: Any, kind: str, path: str) -> Any:
    """``value`` checked for a field of ``kind``, in a canonical form."""
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidFilter(path, f"must be a number, not {_json(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidFilter(path, "must be a finite number")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise InvalidFilter(path, f"must be true or false, not {_json(value)}")
        return value
    if kind == "json":
        if len(_json(value)) > MAX_STRING:
            raise InvalidFilter(path, f"must be at most {MAX_STRING} characters of JSON")
        return value
    if not isinstance(value, str):
        raise InvalidFilter(path, f"must be a string, not {_json(value)}")
    if len(value) > MAX_STRING:
        raise InvalidFilter(path, f"must be at most {MAX_STRING} characters")
    if "\x00" in value or any("\ud800" <= ch <= "\udfff" for ch in value):
        raise InvalidFilter(path, "holds a NUL or a lone surrogate, which cannot be compared")
    if kind == "string":
        return value
    parsers: dict[str, Any] = {
        "date": datetime.date.fromisoformat,
        "datetime": datetime.datetime.fromisoformat,
        "time": datetime.time.fromisoformat,
    }
    try:
        parsed = parsers[kind](value)
    except ValueError:
        raise InvalidFilter(path, f"must be an ISO 8601 {kind}, not {value!r}") from None
    if isinstance(parsed, datetime.datetime) and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.isoformat()


def _json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


# -- The reader's side: what to send -------------------------------------------


def build(
    labels: Iterable[str],
    *,
    where: Any = None,
    changed: Any = None,
    fields: Any = None,
    filters: Any = None,
) -> dict[str, Any]:
    """The ``filters`` JSON of a pull or subscription from its keyword arguments.

    ``where``, ``changed`` and ``fields`` are for a reader of one model;
    ``filters`` (label -> ``{"where": ..., ...}``) names the model of each
    filter. The publisher checks them (a 400 names what is wrong).
    """
    chosen = sorted(set(labels))
    data: dict[str, Any] = {}
    if filters:
        if not isinstance(filters, dict):
            raise InvalidFilter("filters", "must be a dict of model label to filter")
        data = {label: dict(spec) for label, spec in filters.items()}
    short = {"where": where, "changed": changed, "fields": fields}
    short = {k: (list(v) if k != "where" else v) for k, v in short.items() if v is not None}
    if short:
        if len(chosen) != 1:
            raise InvalidFilter(
                "where",
                "where=, changed= and fields= are for one model: name it with models=[...] "
                "or give filters={label: {...}} per model",
            )
        data.setdefault(chosen[0], {}).update(short)
    return data


def encode(data: Mapping[str, Any]) -> str:
    """The ``filters`` query parameter: compact JSON, keys sorted (one URL per filter)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def as_json(parsed: Filters) -> dict[str, Any]:
    """The canonical JSON of parsed filters, by label."""
    return {label: parsed[label].as_json() for label in sorted(parsed)}


# -- Its JSON Schema (the OpenAPI document's Filters) ----------------------------

GRAMMAR = (
    "Per model label: where (a row predicate in Django's lookup form on published "
    "fields: every key of an object must hold; and / or take a non-empty list of such "
    "objects, not one object; a key is a field, or field__lookup with the lookups "
    "exact, in, gt, gte, lt, lte, isnull, startswith, endswith, contains; numbers "
    "compare as numbers, strings as strings, dates and times as such, by the field's "
    "type; a lookup on a null value is false), changed (an update is served only when "
    "one of these fields changed) and fields (the published fields to serve; the "
    "primary key always). A change is judged on its new row, a delete on its old row; "
    "an update whose old row matches and new row does not is served as a delete (old: "
    "the row before, new: null), one whose new row matches as an update (upsert it). "
    f"At most {MAX_DEPTH} levels of and / or / not, {MAX_TERMS} lookups, {MAX_IN} "
    f"values in an in, {MAX_STRING} characters in a string. A filter that does not "
    "fit the model's published fields is 400 invalid_filter, with fields naming where."
)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``filters`` (label -> model filter), nesting shown one level."""
    key = "^(and|or|not|[A-Za-z_][A-Za-z0-9_]*(__(" + "|".join(ALL_LOOKUPS) + "))?)$"
    where = {
        "type": "object",
        "minProperties": 1,
        "propertyNames": {"pattern": key},
        "properties": {
            "and": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            "or": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            "not": {"type": "object"},
        },
        "description": 'e.g. {"country": "NZ", "score__gte": 10, "or": [{"vip": true}, '
        '{"email__endswith": "@example.com"}]}',
    }
    names = {"type": "array", "minItems": 1, "items": {"type": "string"}}
    return {
        "type": "object",
        "description": GRAMMAR,
        "additionalProperties": {
            "type": "object",
            "properties": {"where": where, "changed": names, "fields": names},
            "additionalProperties": False,
        },
    }
