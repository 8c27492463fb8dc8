"""The change log and the requests that caused the changes.

Their rows are written by the database triggers (``sql/capture_v3.sql``,
``pubsubpull.capture.statement_log``), never by the ORM: the model classes are
for reading. ``Change`` reads the view of every table of the log
(``sql/changes_v1.sql``). Import them from ``pubsubpull.models``, the app's
models module, which gathers every side's.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

from django.conf import settings
from django.db import models
from django.db.models.expressions import Col
from django.db.models.lookups import Exact

from pubsubpull.exceptions import ChangeLogIsReadOnly

_READ_ONLY = (
    "{} rows are written by pubsubpull's database trigger when a published table "
    "changes; they cannot be created, edited or deleted through the ORM. Change the "
    "published model instead (pruning is done by the pubsubpull_prune command)."
)


class ReadOnlyQuerySet(models.QuerySet):
    def _refuse(self, *args, **kwargs):
        raise ChangeLogIsReadOnly(_READ_ONLY.format(self.model.__name__))

    create = get_or_create = update_or_create = bulk_create = bulk_update = _refuse
    update = delete = _refuse


class ReadOnlyModel(models.Model):
    objects = ReadOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        raise ChangeLogIsReadOnly(_READ_ONLY.format(type(self).__name__))

    def delete(self, *args, **kwargs):
        raise ChangeLogIsReadOnly(_READ_ONLY.format(type(self).__name__))


class Request(ReadOnlyModel):
    """A web request (or a ``pubsubpull.context`` block) that changed published data.

    Written by the first change it makes, in that change's transaction; a request
    that changes nothing leaves no row.
    """

    id = models.UUIDField(primary_key=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        # No constraint: the trail outlives deleted users, and a foreign key
        # check would cost a lookup on every audited write.
        db_constraint=False,
        related_name="+",
    )
    method = models.CharField(max_length=16, blank=True)
    path = models.TextField(blank=True)
    query_string = models.TextField(blank=True)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.TextField(blank=True)
    request_id = models.CharField(
        max_length=200, blank=True, help_text="The incoming request id header, if any."
    )
    started = models.DateTimeField()
    duration = models.DurationField(null=True, blank=True)
    status = models.PositiveSmallIntegerField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    traceparent = models.CharField(
        max_length=55,
        blank=True,
        default="",
        db_default="",
        help_text="The W3C traceparent of the request's trace (its valid header, or "
        "the active OpenTelemetry span's), if any.",
    )
    tracestate = models.CharField(
        max_length=512,
        blank=True,
        default="",
        db_default="",
        help_text="The W3C tracestate that came with the traceparent, if any.",
    )

    class Meta:
        ordering = ["-started"]
        indexes = [models.Index(fields=["started"], name="pubsubpull_request_started")]

    def __str__(self) -> str:
        if self.method:
            return f"{self.method} {self.path}"
        return f"context {self.metadata}" if self.metadata else str(self.id)


def _label(model_or_label: type[models.Model] | models.Model | str) -> str:
    if isinstance(model_or_label, str):
        return model_or_label.lower()
    # Changes are recorded under the table's model: a proxy's are its concrete model's.
    # ModelBase sets concrete_model on every model class, abstract ones included; it
    # is None only on an Options not yet attached to a class.
    concrete = cast(type[models.Model], model_or_label._meta.concrete_model)
    return concrete._meta.label_lower


class ChangeQuerySet(ReadOnlyQuerySet):
    """Reading the audit trail: ``Change.objects.for_object(customer)``."""

    def for_object(self, obj: models.Model) -> ChangeQuerySet:
        """The changes of one model instance, oldest first.

        Matched by its current primary key: changes made before an UPDATE
        that changed the key are under the old one.
        """
        return self.filter(model=_label(obj), object_pk=str(obj.pk))

    def for_model(self, model: type[models.Model] | str) -> ChangeQuerySet:
        """The changes of a model's table (a class or an ``app_label.model`` label)."""
        return self.filter(model=_label(model))

    def by_user(self, user: models.Model | Any) -> ChangeQuerySet:
        """The changes made by requests of ``user`` (an instance or a primary key)."""
        pk = user.pk if isinstance(user, models.Model) else user
        return self.filter(request__user_id=pk)


class _IndexedExact(Exact):
    """``column = x`` on the log's view, with a test of the same x that an index answers.

    A log table of many changes a row knows a change's key and id only once
    its rows are unnested, too late for any index (sql/changes_v1.sql). The
    view's extra columns are what its indexes hold: ``keys`` (GIN) and
    ``row_id``. Both tests together are the same filter, and each table of
    the view answers it from an index.
    """

    also: str  # SQL of the view's alias ({table}) and the value (%s)
    values: int  # how many times the value appears in it

    def as_sql(self, compiler, connection):
        sql, params = super().as_sql(compiler, connection)
        if not isinstance(self.lhs, Col) or not self.rhs_is_direct_value() or self.rhs is None:
            return sql, params
        # The view's alias as the column's own SQL gives it ("table"."column").
        lhs, _ = self.process_lhs(compiler, connection)
        also = self.also.replace("{table}", lhs.rsplit(".", 1)[0])
        return f"({sql} AND {also})", [*params, *[params[-1]] * self.values]


class _ObjectKeyExact(_IndexedExact):
    also = "{table}.keys @> ARRAY[%s]::text[]"
    values = 1


class _IdExact(_IndexedExact):
    # A row's changes are its id and the 1,023 after it at most (CHUNK).
    also = "{table}.row_id BETWEEN %s - 1023 AND %s"
    values = 2


class Change(ReadOnlyModel):
    """One inserted, updated or deleted row of a published table (or one TRUNCATE)."""

    class Op(models.TextChoices):
        INSERT = "insert"
        UPDATE = "update"
        DELETE = "delete"
        TRUNCATE = "truncate"

    id = models.BigAutoField(primary_key=True)
    txid = models.BigIntegerField(
        help_text="pg_current_xact_id() of the writing transaction; the feed "
        "orders by (txid, id) and only serves transactions that have ended."
    )
    # Collation "C": the object index compares bytes instead of calling the
    # locale's strcoll, which made every captured row's index insert dearer
    # (labels and keys are looked up by equality; their order means nothing).
    model = models.CharField(
        max_length=200, db_collation="C", help_text="The model label, e.g. shop.customer."
    )
    object_pk = models.TextField(
        null=True, db_collation="C", help_text="The row's primary key; empty for TRUNCATE."
    )
    op = models.CharField(max_length=8, choices=Op.choices)
    at = models.DateTimeField(help_text="When the statement that made the change started.")
    request = models.ForeignKey(
        Request,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        # The trigger writes the request row after the change rows of a
        # statement, and a per-row foreign key check would double the cost of
        # bulk writes.
        db_constraint=False,
        # Indexed below only where set: most changes (bulk jobs, migrations,
        # psql) have no request, and indexing their NULLs cost every write.
        db_index=False,
        related_name="changes",
    )
    old = models.JSONField(null=True, help_text="The published columns before the change.")
    new = models.JSONField(null=True, help_text="The published columns after the change.")

    # A ClassVar as ReadOnlyModel's manager is (the stubs' plugin makes that one so).
    objects: ClassVar = ChangeQuerySet.as_manager()

    class Meta:
        # A view (sql/changes_v1.sql) over pubsubpull_change, whose indexes
        # (feed, object, request) pubsubpull's migrations and SQL keep, and the
        # log's other tables.
        managed = False
        db_table = "pubsubpull_log_changes"
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.op} {self.model} {self.object_pk or ''}".rstrip()

    @property
    def diff(self) -> dict[str, tuple[Any, Any]]:
        """``{column: (old, new)}`` for the columns this change changed.

        An update lists only the columns whose value changed; an insert lists
        every column as ``(None, value)``, a delete as ``(value, None)``, and a
        truncate nothing. Keys are the published column names as stored
        (``country_id`` for a foreign key ``country``); values are as JSON
        stored them (numbers, strings, ISO dates).
        """
        old, new = self.old or {}, self.new or {}
        return {
            column: (old.get(column), new.get(column))
            for column in [*old, *(c for c in new if c not in old)]
            if old.get(column) != new.get(column) or (column in old) != (column in new)
        }

    @property
    def user(self):
        """The user whose request made this change, or None (also if since deleted)."""
        if self.request_id is None:
            return None
        try:
            # select_related() leaves None where a row is missing; a plain
            # access raises instead. No foreign key constraints: rows can go.
            request = self.request
            return request.user if request is not None else None
        except models.ObjectDoesNotExist:
            return None


class LogRow(ReadOnlyModel):
    """A row of any table of the change log: ``pubsubpull_log``, their parent (sql/log_v1.sql).

    Not for reading (``Change`` is). A managed model so that Django empties it
    where it empties every managed model's table (``flush``, and between
    ``TransactionTestCase`` tests): a TRUNCATE of the parent empties every log
    table, ``pubsubpull_change`` and capture version 4's alike.
    """

    id = models.BigIntegerField(primary_key=True)
    txid = models.BigIntegerField()
    model = models.CharField(max_length=200, db_collation="C")
    op = models.CharField(max_length=8)
    at = models.DateTimeField()
    request_id = models.UUIDField(null=True)
    rows = models.IntegerField(default=1)

    class Meta:
        db_table = "pubsubpull_log"
        default_permissions = ()

    def __str__(self) -> str:
        return f"{self.op} {self.model} ({self.rows} from {self.id})"


Change._meta.get_field("object_pk").register_lookup(_ObjectKeyExact)
Change._meta.get_field("id").register_lookup(_IdExact)
