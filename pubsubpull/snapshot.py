"""Snapshots: a published model's rows, keyset page by keyset page, published fields only.

PostgreSQL renders each row as JSON the way the capture trigger does
(``to_jsonb`` of the published columns), so an instance and a change of it
look alike, and a page costs one query and no Python per field. Pages are
bounded by ``limit``, so memory stays flat however large the table.

The first page also gives ``feed_position``: a feed cursor from the same
statement's snapshot. Following the feed from there after the last page
misses nothing that changed while the pages were read::

    from pubsubpull import snapshot

    page = snapshot.read_instances("shop.customer", limit=1000)
    position = page.feed_position
    while True:
        for instance in page.instances:
            store(instance.pk, instance.fields)
        if page.next is None:
            break
        page = snapshot.read_instances("shop.customer", after=page.next, limit=1000)
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connections, router

from .feed import Position, fence_position
from .registry import Registration, get_registration

# One template for every model; {names} are quoted identifiers of the
# registration's table and published columns. The sequence is the newest
# change of the row, found through the (model, object_pk, id) index; the pk
# text is computed as the trigger computes object_pk.
_PAGE_SQL = """
WITH fence AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin,
           coalesce(h.txid, 0) AS horizon_txid, coalesce(h.change_id, 0) AS horizon_id
    FROM (SELECT 1) AS one
    LEFT JOIN pubsubpull_horizon AS h ON h.id = 1
)
SELECT fence.xmin, fence.horizon_txid, fence.horizon_id,
       page.pk_json, page.pk_text, page.sequence, page.fields
FROM fence
LEFT JOIN LATERAL (
    SELECT t.{pk} AS key,
           to_jsonb(t.{pk})::text AS pk_json,
           to_jsonb(t.{pk}) #>> '{{}}' AS pk_text,
           (SELECT max(c.id) FROM pubsubpull_change AS c
            WHERE c.model = %(label)s AND c.object_pk = to_jsonb(t.{pk}) #>> '{{}}') AS sequence,
           to_jsonb(published)::text AS fields
    FROM {table} AS t
    CROSS JOIN LATERAL (SELECT {columns}) AS published
    WHERE {where}
    ORDER BY t.{pk}
    LIMIT %(limit)s
) AS page ON true
ORDER BY page.key
"""


class InvalidAfter(ValueError):
    """An ``after`` token that is not from a previous page of this model."""


@dataclass
class Instance:
    """One row: its primary key, the id of its newest change, its published fields."""

    pk_json: str
    pk_text: str
    sequence: int | None
    fields_json: str

    @cached_property
    def pk(self) -> Any:
        return json.loads(self.pk_json)

    @cached_property
    def fields(self) -> dict[str, Any]:
        return json.loads(self.fields_json)


@dataclass
class InstancePage:
    instances: list[Instance]
    next: str | None
    """The ``after`` token of the next page; None on the last page."""
    feed_position: Position | None
    """On the first page: where to follow the feed from after the snapshot."""


def _registration(model: Registration | str | type) -> Registration:
    if isinstance(model, Registration):
        return model
    registration = get_registration(model)
    if registration is None:
        raise LookupError(f"{model} is not a published model.")
    return registration


def encode_after(pk_text: str) -> str:
    return base64.urlsafe_b64encode(f"k1.{pk_text}".encode()).decode().rstrip("=")


def decode_after(registration: Registration, token: str) -> Any:
    """The primary key value an ``after`` token stands for; InvalidAfter if none."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        raw = ""
    if not raw.startswith("k1."):
        raise InvalidAfter(
            f"{token!r} is not a page token: use the next link of the previous page."
        )
    return to_pk(registration, raw[3:], InvalidAfter)


def to_pk(registration: Registration, text: str, error: type[Exception] = LookupError) -> Any:
    """Convert primary key text (from a URL or a token) to a database value."""
    field = registration.model._meta.pk
    try:
        value = field.to_python(text)
        field.run_validators(value)
    except (ValidationError, ValueError, TypeError, OverflowError) as exc:
        raise error(f"{text!r} is not a primary key of {registration.label}.") from exc
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise error(f"{text!r} is not a primary key of {registration.label}.")
    if isinstance(value, str) and "\x00" in value:
        raise error(f"{text!r} is not a primary key of {registration.label}.")
    return value


def _query(registration: Registration, where: str, params: dict, limit: int | None, using):
    alias = using or router.db_for_read(registration.model)
    connection = connections[alias]
    quote = connection.ops.quote_name
    sql = _PAGE_SQL.format(
        pk=quote(registration.pk_column),
        table=quote(registration.table),
        columns=", ".join(f"t.{quote(c)}" for c in registration.published_columns),
        where=where,
    )
    if limit is None:
        sql = sql.replace("LIMIT %(limit)s", "")
    pk_field = registration.model._meta.pk
    params = {
        **{k: pk_field.get_db_prep_value(v, connection) for k, v in params.items()},
        "label": registration.label,
        "limit": limit,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    xmin, horizon_txid, horizon_id = rows[0][:3]
    instances = [Instance(*row[3:]) for row in rows if row[3] is not None]
    # The xmin is the whole server's: a long transaction in another
    # database can hold it behind changes that were pruned since. This page
    # already shows what those changes did (they committed before the prune
    # this statement sees), so the feed may start after them.
    return max(fence_position(xmin), Position(horizon_txid, horizon_id)), instances


def read_instances(
    model: Registration | str | type,
    after: str | None = None,
    limit: int = 100,
    *,
    using: str | None = None,
) -> InstancePage:
    """One keyset page of a published model's rows, ordered by primary key.

    ``after`` is the ``next`` token of the previous page (None for the first
    page). Raises ``InvalidAfter`` for a token that is not one, ``LookupError``
    for a model that is not published.
    """
    registration = _registration(model)
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if after is None:
        position, instances = _query(registration, "true", {}, limit, using)
    else:
        key = decode_after(registration, after)
        pk = connections[using or "default"].ops.quote_name(registration.pk_column)
        _, instances = _query(registration, f"t.{pk} > %(after)s", {"after": key}, limit, using)
        position = None
    following = encode_after(instances[-1].pk_text) if len(instances) == limit else None
    return InstancePage(instances, following, position)


def read_instance(
    model: Registration | str | type, pk: Any, *, using: str | None = None
) -> Instance | None:
    """One row by primary key (a value, or its text as in a URL); None when there is none."""
    registration = _registration(model)
    if isinstance(pk, str):
        pk = to_pk(registration, pk)
    quote = connections[using or "default"].ops.quote_name
    where = f"t.{quote(registration.pk_column)} = %(pk)s"
    _, instances = _query(registration, where, {"pk": pk}, None, using)
    return instances[0] if instances else None
