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

Local fields the mirror does not map get their model default (a callable is
called per row, as ``Model()`` would) or their ``db_default``; a NOT NULL
field with neither is refused when the mirror is declared.

A snapshot (the first, or a new one after the publisher answered 410 because
its log no longer reaches the cursor) marks each key it writes
(``MirrorSeen``); in the transaction of its last page, the rows it did not
mark are deleted: they are gone at the publisher (deleted in the part of the
log that was pruned). So the copy ends with exactly the publisher's rows, and
no live row is missing at any moment in between.

Tombstones are pruned after MIRROR_TOMBSTONE_RETENTION. Why that is safe: a
tombstone only matters for an event of the same object that is older (a
lower sequence) and arrives after the delete. A pull cursor, or a
subscription with its catch-up, only goes forward in the feed (it drops what
is at or before its position), and the feed serves one object's changes in
transaction-id order; so the one older event that can follow the delete is a
change made by a transaction with a later id that committed before the
delete's did, and the feed serves it as soon as every transaction that was
running then has ended: seconds, or the lifetime of the publisher's longest
transaction. Feeding one mirror from two streams at different positions (a
pull cursor and a subscription of another name) is not protected beyond the
retention.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, cast

import orjson
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, models, transaction
from django.utils import timezone

from pubsubpull import conf
from pubsubpull.client.models import MirrorSeen, MirrorTombstone, PullCursor, RemoteSubscription
from pubsubpull.client.source import Publisher, get_json, split_source
from pubsubpull.client.waiting import DEFAULT_TIMEOUT, latest, target, wait_until_applied
from pubsubpull.exceptions import SourceError
from pubsubpull.protocol import cursor as cursors
from pubsubpull.protocol import filters as filtering
from pubsubpull.protocol.events import Event

logger = logging.getLogger("pubsubpull.client")

TOMBSTONES = MirrorTombstone._meta.db_table
SEEN = MirrorSeen._meta.db_table


def _dumps(records: list[dict[str, Any]]) -> str:
    """A page's records as JSON for json_to_recordset: orjson, or json beyond its range."""
    try:
        return orjson.dumps(records).decode()
    except (TypeError, orjson.JSONEncodeError):  # an integer beyond 64 bits
        return json.dumps(records)


def _json_value(field: models.Field, value: Any) -> Any:
    """A Python value of ``field`` as json_to_recordset reads it back into its column."""
    if isinstance(field, models.JSONField):
        return value
    value = field.get_db_prep_save(value, connection)
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return "\\x" + bytes(value).hex()
    return str(value)  # Decimal, UUID, ...


def _filled_by_database(field: models.Field) -> bool:
    """The database gives it a value on INSERT: a serial key, db_default, generated."""
    return (
        getattr(field, "generated", False)
        or getattr(field, "db_default", models.NOT_PROVIDED) is not models.NOT_PROVIDED
        or (field.primary_key and getattr(field, "db_returning", False))
    )


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
        whole_transactions: bool = False,
        defined_in: str | None = None,
        where: dict[str, Any] | None = None,
        changed: list[str] | None = None,
        filters: dict[str, Any] | None = None,
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
        self.whole_transactions = whole_transactions
        self.name = name or f"mirror:{model._meta.label_lower}"
        self.defined_in = defined_in
        # What the publisher serves this copy (checked there): its rows, the
        # updates worth applying, the fields it sends.
        self.filters = filtering.build([self.label], where=where, changed=changed, filters=filters)
        opts = model._meta
        for local in [key, sequence, *self.fields]:
            opts.get_field(local)  # FieldDoesNotExist names the field
        self.defaulted = self._unmapped_fields()

    def _unmapped_fields(self) -> list[models.Field]:
        """The unmapped fields an INSERT must fill from their defaults; refuse NOT NULL
        fields that have none (every page would fail with an IntegrityError)."""
        opts = self.model._meta
        written = {opts.get_field(n).name for n in (self.key, self.sequence, *self.fields)}
        defaulted, missing = [], []
        for field in opts.concrete_fields:
            if field.name in written or _filled_by_database(field):
                continue
            if field.has_default() or _auto_now(field):
                defaulted.append(field)
            elif not field.null:
                missing.append(field)
        if missing:
            names = ", ".join(f.name for f in missing)
            first = missing[0].name
            raise ImproperlyConfigured(
                f"mirror() of {self.label} into {opts.label} writes {self.key}, "
                f"{self.sequence} and the mapped fields only, but {opts.label}.{names} "
                f"{'is' if len(missing) == 1 else 'are'} NOT NULL without a default, so "
                f"every row would fail. Map {'it' if len(missing) == 1 else 'them'} "
                f'(fields={{..., "{first}": "<remote field>"}}), give '
                f"{'it' if len(missing) == 1 else 'each'} a default (default= or "
                "db_default=), or allow NULL (null=True)."
            )
        return defaulted

    def __repr__(self) -> str:
        return f"<Mirror {self.label} -> {self.model._meta.label}>"

    # -- running it ----------------------------------------------------------

    def pull(self, **options: Any) -> PullCursor:
        """Pull mode: snapshot, then follow the feed (run by ``pubsubpull_worker``)."""
        from pubsubpull.client.pulling import pull

        options.setdefault("page_size", self.page_size)
        options.setdefault("whole_transactions", self.whole_transactions)
        options.setdefault("filters", self.filters)
        return pull(self.source_url, self, name=self.name, auth=self.auth, **options)

    def subscribe(self, callback_url: str, *, name: str | None = None) -> RemoteSubscription:
        """Push mode: make the copy now (snapshot and feed), then subscribe from there.

        The view at ``callback_url`` is :meth:`receiver`. Call :meth:`catch_up`
        when the service starts, to pull whatever a lost subscription missed.
        """
        from pubsubpull.client.pulling import pull_down, run
        from pubsubpull.client.receiver import subscribe

        cursor = pull_down(
            self.source_url, self, name=self.name, auth=self.auth, enqueue=False,
            page_size=self.page_size, whole_transactions=self.whole_transactions,
            filters=self.filters,
        )  # fmt: skip
        while True:
            outcome = run(cursor.id, budget=3600, stop_when_caught_up=True, now=True)
            cursor.refresh_from_db()
            if outcome == "done" or cursor.phase == PullCursor.Phase.DONE:
                break
            if cursor.state == PullCursor.State.BLOCKED:
                raise RuntimeError(
                    f"The copy of {self.label} into {self.model._meta.label} is blocked: "
                    f"{cursor.last_error}"
                )
            if outcome in ("busy", "failed"):  # a worker has it, or a backoff
                wait = (cursor.next_run_at - timezone.now()).total_seconds()
                time.sleep(min(max(wait, 0.2), 30.0))
        return subscribe(
            self.service_url,
            name or self.name.replace(":", "-"),
            callback_url,
            models=[self.label],
            auth=self.auth,
            start=cursor.feed_position,
            whole_transactions=self.whole_transactions,
            filters=self.filters,
        )

    def receiver(self, subscription: str | None = None):
        """The view for push mode's callback URL."""
        from pubsubpull.client.receiver import receiver

        return receiver(self, subscription=subscription)

    def catch_up(self, subscription: RemoteSubscription | None = None) -> int:
        """Push mode: pull the feed from the last handled position to now; events applied."""
        subscription = subscription or RemoteSubscription.objects.get(
            publisher=self.service_url,
            owner=RemoteSubscription.owner_for(self.auth),
            name=self.name.replace(":", "-"),
        )
        changes_url = Publisher(self.service_url, self.auth).changes_url()
        applied = 0
        while True:
            params: dict[str, Any] = {
                "models": self.label,
                "limit": self.page_size or conf.pull_page_size(),
            }
            if subscription.position:
                params["after"] = subscription.position
            if self.whole_transactions:
                params["whole_transactions"] = "1"
            if self.filters:
                params["filters"] = filtering.encode(self.filters)
            body = get_json(changes_url, token=self.auth, params=params)
            with transaction.atomic():
                locked = RemoteSubscription.objects.select_for_update().get(pk=subscription.pk)
                done = cursors.parse(locked.position)
                events = [
                    Event.from_change(c)
                    for c in body["changes"]
                    if cursors.is_new(c.get("cursor"), done)
                ]
                self.handle_events(events)
                if cursors.advances(body["cursor"], done):
                    locked.position = body["cursor"]
                locked.save(update_fields=["position"])
            subscription = locked
            applied += len(events)
            if not body["changes"] or (
                not self.whole_transactions
                and len(body["changes"]) < params["limit"]
                and not body.get("more")
            ):
                return applied

    # -- read your writes --------------------------------------------------------

    def applied_position(self) -> cursors.Position | None:
        """How far into the publisher's feed this copy is complete (None: not yet known).

        The furthest of its pull cursor (past its snapshot) and its push
        subscription's receiver: each has applied every change up to its
        position.
        """
        from pubsubpull.client import pulling

        pushed = (
            RemoteSubscription.objects.filter(
                publisher=self.service_url,
                owner=RemoteSubscription.owner_for(self.auth),
                name=self.name.replace(":", "-"),
            )
            .values_list("position", flat=True)
            .first()
        )
        return latest(pulling.applied_position(self.name), cursors.parse(pushed))

    def wait_for(
        self,
        position: cursors.Position | str | None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        database: str | None = None,
        catch_up_after: float | None = None,
    ) -> cursors.Position | None:
        """Return once this copy has applied the publisher's changes up to ``position``.

        ``position`` is the ``Pubsubpull-Position`` header of the publisher's
        response to a request that changed its data (or a feed cursor);
        None, as a response without the header gives, returns at once.
        ``database`` picks the position of one database from a header that
        names several. Raises :class:`~pubsubpull.exceptions.WaitTimeout`
        after ``timeout`` seconds. Works in pull and push mode; the worker or
        receiver applying the changes may be another process::

            answer = httpx.put(f"{CUSTOMERS}/customers/{pk}/", json={"country": "NZ"})
            customers.wait_for(answer.headers.get("Pubsubpull-Position"), timeout=5)
            CustomerCountry.objects.get(remote_id=pk)        # shows "NZ"

        ``catch_up_after`` (push mode): when the copy is still short after
        that many seconds, pull the feed once from the subscription's
        position (:meth:`catch_up`, in this process), which also passes the
        changes of models the subscription does not carry, and gets the data
        when delivery is slow or down.
        """
        wanted = target(position, database)
        deadline = None if catch_up_after is None else time.monotonic() + catch_up_after

        def applied() -> cursors.Position | None:
            nonlocal deadline
            now = self.applied_position()
            short = wanted is not None and (now is None or now < wanted)
            if short and deadline is not None and time.monotonic() >= deadline:
                deadline = None  # once
                subscription = self._subscription()
                if subscription is not None:
                    try:
                        self.catch_up(subscription)
                    except SourceError as e:
                        logger.warning("%r: catching up to wait for %s failed: %s", self, wanted, e)
                    now = self.applied_position()
            return now

        return wait_until_applied(
            applied,
            wanted,
            timeout=timeout,
            what=f"The mirror of {self.label} into {self.model._meta.label}",
        )

    def _subscription(self) -> RemoteSubscription | None:
        return RemoteSubscription.objects.filter(
            publisher=self.service_url,
            owner=RemoteSubscription.owner_for(self.auth),
            name=self.name.replace(":", "-"),
        ).first()

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
        self._apply_page(events, mark=False)

    def handle_snapshot(self, events: list[Event], *, first: bool, last: bool) -> None:
        """Apply a snapshot page (the pull calls this, in the page's transaction).

        ``first``: the snapshot's first page (marks of an interrupted earlier
        snapshot are dropped); ``last``: its last page, after which every row
        whose key this snapshot did not write is deleted.
        """
        marks = MirrorSeen.objects.filter(mirror=self.name)
        if first:
            marks.delete()
            if self.model._default_manager.exists():
                MirrorSeen.objects.create(mirror=self.name, object_pk=None)
        marking = marks.filter(object_pk=None).exists()
        self._apply_page(events, mark=marking)
        if last:
            if marking:
                self._sweep()
            marks.delete()

    def _apply_page(self, events: list[Event], *, mark: bool) -> None:
        latest: dict[Any, Event] = {}
        truncated: int | None = None
        for event in events:
            if event.model != self.label:
                continue
            if event.op == "truncate":
                # Everything before it is gone; drop what this page had so far.
                truncated = event.sequence or 0
                self._apply(latest, mark)
                latest = {}
                self._truncate(truncated)
                continue
            # Primary keys come from JSON: numbers and strings, hashable.
            known = latest.get(event.pk)
            if known is None or (event.sequence or 0) >= (known.sequence or 0):
                latest[event.pk] = event
        self._apply(latest, mark)

    def _column(self, field: models.Field) -> tuple[str, str]:
        kind = field.db_type(connection)
        # The table's column decides what fits (a migration may have widened
        # it); a varchar(n) in the recordset would refuse first.
        if re.fullmatch(r"varchar\(\d+\)", kind or ""):
            kind = "text"
        # A concrete field: it has a column and a type (checked at declaration).
        return connection.ops.quote_name(cast(str, field.column)), cast(str, kind)

    def _columns(self):
        opts = self.model._meta
        table = connection.ops.quote_name(opts.db_table)
        key, seq = (self._column(self._field(n)) for n in (self.key, self.sequence))
        return table, key, seq, [self._column(self._field(f)) for f in self.fields]

    def _field(self, name: str) -> models.Field:
        return cast(models.Field, self.model._meta.get_field(name))  # checked at declaration

    def _apply(self, latest: dict[Any, Event], mark: bool = False) -> None:
        if not latest:
            return
        upserts, deletes = [], []
        remotes = list(self.fields.values())
        for event in latest.values():
            sequence = event.sequence or 0
            if event.deleted:
                deletes.append({"k": event.pk, "s": sequence})
            else:
                # A snapshot row without a sequence has no change left in the
                # publisher's log: whatever we hold of it is older (its changes
                # were pruned), so it applies, whatever our stored sequence says.
                unknown = event.op == "snapshot" and event.sequence is None
                record = {"k": event.pk, "s": sequence, "u": unknown}
                for n, remote in enumerate(remotes):
                    record[f"f{n}"] = self._value(event.data or {}, remote)
                for n, field in enumerate(self.defaulted):
                    # Per row, as Model() would: a callable default (uuid4) differs.
                    value = timezone.now() if _auto_now(field) else field.get_default()
                    record[f"d{n}"] = _json_value(field, value)
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
                    INSERT INTO {TOMBSTONES} (mirror, object_pk, sequence, at)
                    SELECT %s, d.k::text, d.s, now() FROM d
                    ON CONFLICT (mirror, object_pk) DO UPDATE
                    SET sequence = greatest({TOMBSTONES}.sequence, excluded.sequence),
                        at = excluded.at
                    """,
                    [_dumps(deletes), self.name],
                )
                self.prune_tombstones()
            if upserts:
                defaulted = [self._column(f) for f in self.defaulted]
                names = [c for c, _ in columns] + [c for c, _ in defaulted]
                typed = [f"f{n} {t}" for n, (_, t) in enumerate(columns)]
                typed += [f"d{n} {t}" for n, (_, t) in enumerate(defaulted)]
                values = [f"r.f{n}" for n in range(len(columns))]
                values += [f"r.d{n}" for n in range(len(defaulted))]
                # Defaults fill a new row only; auto_now also moves on update.
                updates = [f"{c} = excluded.{c}" for c, _ in columns]
                updates += [
                    f"{c} = excluded.{c}"
                    for (c, _), f in zip(defaulted, self.defaulted, strict=True)
                    if getattr(f, "auto_now", False)
                ]
                records = _dumps(upserts)
                if columns and any(r["u"] for r in upserts):
                    assigned = ", ".join(
                        [f"{c} = r.f{n}" for n, (c, _) in enumerate(columns)]
                        + [
                            f"{c} = r.d{n}"
                            for n, ((c, _), f) in enumerate(
                                zip(defaulted, self.defaulted, strict=True)
                            )
                            if getattr(f, "auto_now", False)
                        ]
                    )
                    cursor.execute(
                        f"""
                        UPDATE {table} AS t SET {assigned}
                        FROM json_to_recordset(%s::json)
                             AS r(k {key_type}, u boolean{"".join(", " + t for t in typed)})
                        WHERE r.u AND t.{key} = r.k
                        """,
                        [records],
                    )
                cursor.execute(
                    f"""
                    WITH r AS (
                        SELECT * FROM json_to_recordset(%s::json)
                        AS r(k {key_type}, s bigint, u boolean{"".join(", " + t for t in typed)})
                    ),
                    seen AS (
                        INSERT INTO {SEEN} (mirror, object_pk)
                        SELECT %s, r.k::text FROM r WHERE %s
                        ON CONFLICT (mirror, object_pk) DO NOTHING
                    )
                    INSERT INTO {table} AS t ({key}, {seq}{"".join(", " + n for n in names)})
                    SELECT r.k, r.s{"".join(", " + v for v in values)}
                    FROM r
                    WHERE r.u OR NOT EXISTS (
                        SELECT 1 FROM {TOMBSTONES} AS g
                        WHERE g.mirror = %s AND g.object_pk = r.k::text AND g.sequence >= r.s
                    )
                    ON CONFLICT ({key}) DO UPDATE
                    SET {seq} = excluded.{seq}{"".join(", " + u for u in updates)}
                    WHERE t.{seq} < excluded.{seq}
                    """,
                    [records, self.name, mark, self.name],
                )

    def _sweep(self) -> int:
        """End of a snapshot: delete the rows it did not write."""
        table, (key, _), _, _ = self._columns()
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                DELETE FROM {table} AS t
                WHERE NOT EXISTS (
                    SELECT 1 FROM {SEEN} AS s WHERE s.mirror = %s AND s.object_pk = t.{key}::text
                )
                """,
                [self.name],
            )
            return cursor.rowcount

    def prune_tombstones(self) -> int:
        """Forget tombstones older than MIRROR_TOMBSTONE_RETENTION (see the module doc)."""
        cutoff = timezone.now() - timedelta(seconds=conf.mirror_tombstone_retention())
        deleted, _ = MirrorTombstone.objects.filter(mirror=self.name, at__lt=cutoff).delete()
        return deleted

    def _truncate(self, sequence: int) -> None:
        table, _, (seq, _), _ = self._columns()
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {table} WHERE {seq} < %s", [sequence])


def _auto_now(field: models.Field) -> bool:
    return getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False)


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
    whole_transactions: bool = False,
    where: dict[str, Any] | None = None,
    changed: list[str] | None = None,
    filters: dict[str, Any] | None = None,
) -> Mirror:
    """Keep ``model`` a copy of the remote model at ``source_url`` (its instances URL).

    ``fields`` maps local field names to remote ones; ``key`` is the local
    field (unique) holding the remote primary key, ``sequence`` a
    BigIntegerField (default 0) holding the remote object's sequence.
    ``auth`` is the publisher's bearer token, ``name`` the pull cursor's name
    (default ``mirror:<app_label>.<model>``; its subscription's name has
    ``-`` for ``:``), ``page_size`` the instances or changes per page
    (default ``PULL_PAGE_SIZE``). ``whole_transactions=True`` never applies
    half of a publisher's transaction: pages (pull mode) and batches (push
    mode) hold whole transactions, each applied in one local transaction.
    Assign
    the result to a module-level name: workers import it by that name. Then
    ``.pull()`` starts pull mode, or ``.subscribe(callback_url)`` with
    ``.receiver()`` mounted there starts push mode.

    ``where`` keeps a copy of only the remote rows that match (the publisher
    evaluates it, docs/filters.rst): a row that stops matching is deleted
    from the copy, one that starts matching is added. ``changed`` applies
    only updates that change one of these remote fields. ``filters``
    (``{label: {"where": ..., "changed": ..., "fields": ...}}``) gives them
    in the wire's form, with ``fields``, the remote fields to be sent.
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
        whole_transactions=whole_transactions,
        defined_in=caller,
        where=where,
        changed=changed,
        filters=filters,
    )
