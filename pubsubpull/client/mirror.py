"""Keep a local model in sync with chosen attributes of a remote model (use case 1).

::

    # billing/models.py
    class CustomerCountry(models.Model):
        remote_id = models.BigIntegerField(unique=True)
        remote_sequence = models.BigIntegerField(default=0)
        country = models.CharField(max_length=2, null=True)

    # billing/mirrors.py
    customers = pubsubpull.mirror(
        "http://customers.internal/pubsubpull/models/customers.customer/instances/",
        CustomerCountry, fields={"country": "country"}, key="remote_id", auth=TOKEN,
    )

    customers.pull()                  # pull mode: snapshot, then the feed (by the worker)
    # or push mode: customers.subscribe(callback_url) + path("…", customers.receiver())

Every write carries the remote object's ``sequence``, and a row is only
changed by an event with a higher one, so repeated or out-of-order events
(a snapshot page that overlaps the feed, a redelivered batch) never take the
copy back. A deleted object leaves a tombstone with its sequence so an older
event cannot bring it back. Each page is one statement per kind (upsert,
delete) whatever its size: no round trip per row.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import orjson
from django.db import connection, models, transaction

from .events import Event
from .models import MirrorTombstone, PullCursor, RemoteSubscription
from .source import Publisher, get_json, split_source


def _dumps(records: list[dict[str, Any]]) -> str:
    """A page's records as JSON for json_to_recordset: orjson, or json beyond its range."""
    try:
        return orjson.dumps(records).decode()
    except (TypeError, orjson.JSONEncodeError):  # an integer beyond 64 bits
        return json.dumps(records)


class Mirror:
    """A handler that applies a remote model's events to a local model (see module doc)."""

    def __init__(
        self,
        source_url: str,
        model: type[models.Model],
        fields: Mapping[str, str],
        *,
        key: str = "remote_id",
        sequence: str = "remote_sequence",
        auth: str | None = None,
        name: str | None = None,
        page_size: int | None = None,
        defined_in: str | None = None,
    ):
        service_url, labels = split_source(source_url)
        if not labels:
            raise ValueError(
                "mirror() needs one model's instances URL, like "
                "http://host/pubsubpull/models/customers.customer/instances/"
            )
        self.source_url = source_url
        self.service_url = service_url
        self.label = labels[0]
        self.model = model
        self.fields = dict(fields)
        self.key = key
        self.sequence = sequence
        self.auth = auth or ""
        self.page_size = page_size
        self.name = name or f"mirror:{model._meta.label_lower}"
        self.defined_in = defined_in
        opts = model._meta
        for local in [key, sequence, *self.fields]:
            opts.get_field(local)  # FieldDoesNotExist names the field

    def __repr__(self) -> str:
        return f"<Mirror {self.label} -> {self.model._meta.label}>"

    # -- running it ----------------------------------------------------------

    def pull(self, **options: Any) -> PullCursor:
        """Pull mode: snapshot, then follow the feed (run by ``pubsubpull_worker``)."""
        from .pulling import pull

        options.setdefault("page_size", self.page_size)
        return pull(self.source_url, self, name=self.name, auth=self.auth, **options)

    def subscribe(self, callback_url: str, *, name: str | None = None) -> RemoteSubscription:
        """Push mode: make the copy now (snapshot and feed), then subscribe from there.

        The view at ``callback_url`` is :meth:`receiver`. Call :meth:`catch_up`
        when the service starts, to pull whatever a lost subscription missed.
        """
        from .pulling import pull_down, run
        from .receiver import subscribe

        cursor = pull_down(
            self.source_url, self, name=self.name, auth=self.auth, enqueue=False,
            page_size=self.page_size,
        )  # fmt: skip
        while run(cursor.id, budget=3600, stop_when_caught_up=True, now=True) != "done":
            cursor.refresh_from_db()
            if cursor.phase == PullCursor.Phase.DONE:
                break
        cursor.refresh_from_db()
        return subscribe(
            self.service_url,
            name or self.name.replace(":", "-"),
            callback_url,
            models=[self.label],
            auth=self.auth,
            start=cursor.feed_position,
        )

    def receiver(self, subscription: str | None = None):
        """The view for push mode's callback URL."""
        from .receiver import receiver

        return receiver(self, subscription=subscription)

    def catch_up(self, subscription: RemoteSubscription | None = None) -> int:
        """Push mode: pull the feed from the last handled position to now; events applied."""
        from .receiver import _position

        subscription = subscription or RemoteSubscription.objects.get(
            publisher=self.service_url, name=self.name.replace(":", "-")
        )
        changes_url = Publisher(self.service_url, self.auth).changes_url()
        applied = 0
        while True:
            params = {"models": self.label, "limit": self.page_size or 1000}
            if subscription.position:
                params["after"] = subscription.position
            body = get_json(changes_url, token=self.auth, params=params)
            with transaction.atomic():
                locked = RemoteSubscription.objects.select_for_update().get(pk=subscription.pk)
                done = _position(locked.position)
                events = [
                    Event.from_change(c)
                    for c in body["changes"]
                    if done is None or _position(c["cursor"]) > done
                ]
                self.handle_events(events)
                if done is None or _position(body["cursor"]) > done:
                    locked.position = body["cursor"]
                locked.save(update_fields=["position"])
            subscription = locked
            applied += len(events)
            if len(body["changes"]) < params["limit"]:
                return applied

    # -- the handler -----------------------------------------------------------

    def __call__(self, event: Event) -> None:
        self.handle_events([event])

    def _value(self, data: dict[str, Any], remote: str) -> Any:
        if remote in data:
            return data[remote]
        # A foreign key is published by its column name (country_id).
        return data.get(f"{remote}_id")

    def handle_events(self, events: list[Event]) -> None:
        """Apply a page of events: newest per object, in two statements."""
        latest: dict[Any, Event] = {}
        truncated: int | None = None
        for event in events:
            if event.model != self.label:
                continue
            if event.op == "truncate":
                # Everything before it is gone; drop what this page had so far.
                truncated = event.sequence or 0
                self._apply(latest)
                latest = {}
                self._truncate(truncated)
                continue
            # Primary keys come from JSON: numbers and strings, hashable.
            known = latest.get(event.pk)
            if known is None or (event.sequence or 0) >= (known.sequence or 0):
                latest[event.pk] = event
        self._apply(latest)

    def _columns(self):
        opts = self.model._meta
        table = connection.ops.quote_name(opts.db_table)

        def column(name: str) -> tuple[str, str]:
            field = opts.get_field(name)
            return connection.ops.quote_name(field.column), field.db_type(connection)

        return table, column(self.key), column(self.sequence), [column(f) for f in self.fields]

    def _apply(self, latest: dict[Any, Event]) -> None:
        if not latest:
            return
        upserts, deletes = [], []
        remotes = list(self.fields.values())
        for event in latest.values():
            sequence = event.sequence or 0
            if event.deleted:
                deletes.append({"k": event.pk, "s": sequence})
            else:
                record = {"k": event.pk, "s": sequence}
                for n, remote in enumerate(remotes):
                    record[f"f{n}"] = self._value(event.data or {}, remote)
                upserts.append(record)
        table, (key, key_type), (seq, _), columns = self._columns()
        with connection.cursor() as cursor:
            if deletes:
                cursor.execute(
                    f"""
                    WITH d AS (
                        SELECT * FROM json_to_recordset(%s::json) AS r(k {key_type}, s bigint)
                    ),
                    gone AS (
                        DELETE FROM {table} AS t USING d
                        WHERE t.{key} = d.k AND t.{seq} < d.s
                    )
                    INSERT INTO {MirrorTombstone._meta.db_table} (mirror, object_pk, sequence)
                    SELECT %s, d.k::text, d.s FROM d
                    ON CONFLICT (mirror, object_pk) DO UPDATE
                    SET sequence = greatest(
                        {MirrorTombstone._meta.db_table}.sequence, excluded.sequence)
                    """,
                    [_dumps(deletes), self.name],
                )
            if upserts:
                names = ", ".join(c for c, _ in columns)
                typed = ", ".join(f"f{n} {t}" for n, (_, t) in enumerate(columns))
                values = ", ".join(f"r.f{n}" for n in range(len(columns)))
                updates = ", ".join(f"{c} = excluded.{c}" for c, _ in columns)
                cursor.execute(
                    f"""
                    INSERT INTO {table} AS t ({key}, {seq}{", " if names else ""}{names})
                    SELECT r.k, r.s{", " if values else ""}{values}
                    FROM json_to_recordset(%s::json)
                         AS r(k {key_type}, s bigint{", " if typed else ""}{typed})
                    WHERE NOT EXISTS (
                        SELECT 1 FROM {MirrorTombstone._meta.db_table} AS g
                        WHERE g.mirror = %s AND g.object_pk = r.k::text AND g.sequence >= r.s
                    )
                    ON CONFLICT ({key}) DO UPDATE
                    SET {seq} = excluded.{seq}{", " if updates else ""}{updates}
                    WHERE t.{seq} < excluded.{seq}
                    """,
                    [_dumps(upserts), self.name],
                )

    def _truncate(self, sequence: int) -> None:
        table, _, (seq, _), _ = self._columns()
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {table} WHERE {seq} < %s", [sequence])


def mirror(
    source_url: str,
    model: type[models.Model],
    fields: Mapping[str, str],
    *,
    key: str = "remote_id",
    sequence: str = "remote_sequence",
    auth: str | None = None,
    name: str | None = None,
    page_size: int | None = None,
) -> Mirror:
    """Keep ``model`` a copy of the remote model at ``source_url`` (its instances URL).

    ``fields`` maps local field names to remote ones; ``key`` is the local
    field (unique) holding the remote primary key, ``sequence`` a
    BigIntegerField (default 0) holding the remote object's sequence.
    ``auth`` is the publisher's bearer token, ``name`` the pull cursor's name
    (default ``mirror:<app_label>.<model>``; its subscription's name has
    ``-`` for ``:``), ``page_size`` the instances or changes per page
    (default ``PULL_PAGE_SIZE``). Assign
    the result to a module-level name: workers import it by that name. Then
    ``.pull()`` starts pull mode, or ``.subscribe(callback_url)`` with
    ``.receiver()`` mounted there starts push mode.
    """
    caller = sys._getframe(1).f_globals.get("__name__")
    return Mirror(
        source_url,
        model,
        fields,
        key=key,
        sequence=sequence,
        auth=auth,
        name=name,
        page_size=page_size,
        defined_in=caller,
    )
