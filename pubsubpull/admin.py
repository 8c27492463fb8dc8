"""The audit trail in Django's admin: changes, the requests that made them, object history.

``Change`` and ``Request`` are registered read-only. To see an object's
recorded changes from its own admin page, add ``HistoryMixin`` to its
``ModelAdmin``: the "History" button then shows every recorded change of that
object (however it was made, with a field-by-field diff) above the actions
taken in the admin::

    from pubsubpull.admin import HistoryMixin

    @admin.register(Customer)
    class CustomerAdmin(HistoryMixin, admin.ModelAdmin): ...
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.contrib import admin
from django.contrib.admin.utils import quote, unquote
from django.db import models
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.text import capfirst

from pubsubpull.capture.registry import registrations
from pubsubpull.models import Change, Request, ServiceToken

# How many changes a history page or a request page shows before linking to
# the full, paginated list.
SHOWN_CHANGES = 50


@functools.cache
def _column_names(label: str) -> dict[str, str]:
    """``{column: verbose name}`` of a model, for headings of a diff."""
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        return {}
    return {f.column: str(capfirst(f.verbose_name)) for f in model._meta.concrete_fields}


def _value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def diff_table(change: Change):
    """The change as an HTML table: one row per field, before and after."""
    diff = change.diff
    if not diff:
        return "—"
    names = _column_names(change.model)
    rows = format_html_join(
        "",
        "<tr><th>{}</th><td>{}</td><td>{}</td></tr>",
        ((names.get(col, col), _value(old), _value(new)) for col, (old, new) in diff.items()),
    )
    return format_html(
        '<table class="pubsubpull-diff"><thead><tr><th>Field</th><th>Before</th>'
        "<th>After</th></tr></thead><tbody>{}</tbody></table>",
        rows,
    )


def _admin_url(site: admin.AdminSite, model: type[models.Model], view: str, *args) -> str | None:
    opts = model._meta
    if not site.is_registered(model):
        return None
    try:
        return reverse(f"{site.name}:{opts.app_label}_{opts.model_name}_{view}", args=args)
    except NoReverseMatch:
        return None


def _object_url(site: admin.AdminSite, change: Change) -> str | None:
    if change.object_pk is None:
        return None
    try:
        model = apps.get_model(change.model)
    except (LookupError, ValueError):
        return None
    return _admin_url(site, model, "change", quote(change.object_pk))


def changes_url(site: admin.AdminSite, **filters: str) -> str | None:
    """The Change list filtered, e.g. ``changes_url(site, request=id)``."""
    url = _admin_url(site, Change, "changelist")
    return f"{url}?{urlencode(filters)}" if url else None


class ReadOnlyAdmin(admin.ModelAdmin):
    """The log is written by the database trigger only; the admin just reads it."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ModelFilter(admin.SimpleListFilter):
    """By published model; lists the registrations rather than scanning the log."""

    title = "model"
    parameter_name = "model"

    def lookups(self, request, model_admin):
        return [(r.label, f"{r.label} ({r.model._meta.verbose_name})") for r in registrations()]

    def queryset(self, request, queryset):
        value = self.value()
        if value:
            return queryset.filter(model=value.lower())
        return queryset


def _titled(filter_class: type[admin.FieldListFilter], title: str) -> type:
    """``filter_class`` with a title of our choosing (field names are terse)."""

    def __init__(self, *args, **kwargs):
        filter_class.__init__(self, *args, **kwargs)
        self.title = title

    return type(f"{title.title()}Filter", (filter_class,), {"__init__": __init__})


UserFilter = _titled(admin.RelatedFieldListFilter, "user")


@admin.register(Change)
class ChangeAdmin(ReadOnlyAdmin):
    list_display = ["id", "at", "model", "object", "operation", "user", "request_link", "changed"]
    list_display_links = ["id"]
    list_filter = [
        ModelFilter,
        ("op", _titled(admin.ChoicesFieldListFilter, "operation")),
        ("request__user", UserFilter),
        ("at", _titled(admin.DateFieldListFilter, "date")),
    ]
    list_select_related = ["request", "request__user"]
    search_fields = ["object_pk"]  # searched by get_search_results
    search_help_text = "An object's primary key; combine with the model filter."
    ordering = ["-id"]
    # The log grows large: counting all of it on each page costs more than it tells.
    show_full_result_count = False
    fieldsets = [
        (None, {"fields": ["at", "model", "object", "operation", "user", "request_link", "txid"]}),
        ("Changes", {"fields": ["diff"]}),
        ("Stored rows", {"fields": ["old_json", "new_json"], "classes": ["collapse"]}),
    ]
    readonly_fields = [
        "at",
        "model",
        "object",
        "operation",
        "user",
        "request_link",
        "txid",
        "diff",
        "old_json",
        "new_json",
    ]

    def get_search_results(self, request, queryset, search_term):
        """The changes of the object whose primary key is the term, exactly.

        Exact (not the admin's case-insensitive ``=`` search): a log table of
        capture v4 finds an object's changes only by its index of the keys
        (pubsubpull.capture.models, the object_pk lookup).
        """
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(object_pk=term), False

    @admin.display(description="object", ordering="object_pk")
    def object(self, change: Change):
        return _object_link(self.admin_site, change)

    @admin.display(description="operation", ordering="op")
    def operation(self, change: Change):
        return change.get_op_display()

    @admin.display(description="user")
    def user(self, change: Change):
        return change.user or "—"

    @admin.display(description="request", ordering="request__started")
    def request_link(self, change: Change):
        if change.request_id is None:
            return "—"
        url = _admin_url(self.admin_site, Request, "change", quote(str(change.request_id)))
        request_row = _request_of(change)
        label = str(request_row) if request_row is not None else str(change.request_id)
        return format_html('<a href="{}">{}</a>', url, label) if url else label

    @admin.display(description="changed fields")
    def changed(self, change: Change):
        if change.op != Change.Op.UPDATE:
            return "—"
        names = _column_names(change.model)
        return ", ".join(names.get(column, column) for column in change.diff)

    @admin.display(description="diff")
    def diff(self, change: Change):
        return diff_table(change)

    @admin.display(description="before")
    def old_json(self, change: Change):
        return _pretty(change.old)

    @admin.display(description="after")
    def new_json(self, change: Change):
        return _pretty(change.new)


def _request_of(change: Change) -> Request | None:
    """The change's request row; None if it has none, or it was pruned."""
    if change.request_id is None:
        return None
    try:
        return change.request
    except Request.DoesNotExist:
        return None


def _pretty(value: Any):
    if value is None:
        return "—"
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False))


@admin.register(Request)
class RequestAdmin(ReadOnlyAdmin):
    list_display = ["started", "method", "path", "status", "user", "duration", "request_id"]
    list_display_links = ["started"]
    list_filter = [
        "method",
        "status",
        ("user", UserFilter),
        ("started", _titled(admin.DateFieldListFilter, "date")),
    ]
    list_select_related = ["user"]
    search_fields = ["path", "=request_id", "=id"]
    show_full_result_count = False
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    "started",
                    "duration",
                    "user",
                    "method",
                    "path",
                    "query_string",
                    "status",
                    "remote_addr",
                    "user_agent",
                    "request_id",
                    "traceparent",
                    "tracestate",
                    "metadata",
                ]
            },
        ),
        ("Changes", {"fields": ["changes"]}),
    ]
    readonly_fields = ["changes"]

    @admin.display(description="changes made")
    def changes(self, request_row: Request):
        shown = list(request_row.changes.order_by("id")[: SHOWN_CHANGES + 1])
        more = len(shown) > SHOWN_CHANGES
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (c.model, _object_link(self.admin_site, c), c.op, diff_table(c))
                for c in shown[:SHOWN_CHANGES]
            ),
        )
        url = changes_url(self.admin_site, request=str(request_row.pk))
        link = (
            format_html('<p><a href="{}">All changes of this request</a></p>', url) if url else ""
        )
        if not shown:
            return "None survived: they were rolled back, or pruned."
        return format_html(
            '<table class="pubsubpull-changes"><thead><tr><th>Model</th><th>Object</th>'
            "<th>Operation</th><th>Diff</th></tr></thead><tbody>{}</tbody></table>{}{}",
            rows,
            format_html("<p>Only the first {} are shown.</p>", SHOWN_CHANGES) if more else "",
            link,
        )


def _object_link(site: admin.AdminSite, change: Change):
    url = _object_url(site, change) if change.op != Change.Op.DELETE else None
    if url:
        return format_html('<a href="{}">{}</a>', url, change.object_pk)
    return change.object_pk or "—"


# The mixin's methods are a ModelAdmin's, to the type checker.
if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin
else:
    _ModelAdmin = object


class HistoryMixin(_ModelAdmin):
    """Show an object's recorded changes on its admin "History" page.

    Mix it into the ``ModelAdmin`` of a published model. The page lists the
    latest changes (newest first, with who made them, through which request,
    and a field-by-field diff), links to all of them in the Change admin, and
    keeps Django's list of actions taken in the admin below.
    """

    object_history_template = "admin/pubsubpull/object_history.html"

    def history_view(self, request, object_id, extra_context=None):
        obj = self.get_object(request, unquote(object_id))
        extra: dict[str, Any] = {}
        if obj is not None and self.has_view_or_change_permission(request, obj):
            shown = list(
                Change.objects.for_object(obj)
                .select_related("request", "request__user")
                .order_by("-id")[: SHOWN_CHANGES + 1]
            )
            url = None
            site = self.admin_site
            if site.is_registered(Change) and site.get_model_admin(Change).has_view_permission(
                request
            ):
                url = changes_url(
                    self.admin_site, model=_label_of(type(obj)), object_pk=str(obj.pk)
                )
            extra = {
                "pubsubpull_changes": [
                    {
                        "change": change,
                        "diff": diff_table(change),
                        "user": change.user,
                        "request": _request_of(change),
                        "request_url": _admin_url(
                            self.admin_site, Request, "change", quote(str(change.request_id))
                        )
                        if change.request_id
                        else None,
                    }
                    for change in shown[:SHOWN_CHANGES]
                ],
                "pubsubpull_more": len(shown) > SHOWN_CHANGES,
                "pubsubpull_changes_url": url,
            }
        return super().history_view(request, object_id, {**extra, **(extra_context or {})})


def _label_of(model: type[models.Model]) -> str:
    return (model._meta.concrete_model or model)._meta.label_lower


@admin.register(ServiceToken)
class ServiceTokenAdmin(admin.ModelAdmin):
    """Service tokens: create one here (its text is shown once) or with ``pubsubpull_token``."""

    list_display = ["name", "prefix", "scope", "is_active", "created", "last_used"]
    list_filter = ["is_active"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created", "last_used"]
    fields = ["name", "scope", "is_active", "prefix", "created", "last_used"]
    actions = ["revoke", "reactivate"]

    def save_model(self, request, obj, form, change):
        if not change:
            from django.contrib import messages

            from pubsubpull.publisher.api.auth import hash_token, new_token

            token = new_token()
            obj.key_hash, obj.prefix = hash_token(token), token[:12]
            super().save_model(request, obj, form, change)
            messages.warning(
                request,
                f"The token for {obj.name} is {token} — copy it now: only its hash is "
                "stored, so it cannot be shown again.",
            )
            return
        super().save_model(request, obj, form, change)

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        count = queryset.update(is_active=False)
        self.message_user(request, f"Revoked {count} token(s).")

    @admin.action(description="Reactivate the selected tokens")
    def reactivate(self, request, queryset):
        count = queryset.update(is_active=True)
        self.message_user(request, f"Reactivated {count} token(s).")


# Pull cursors, parked events and remote subscriptions (the subscribing side);
# subscriptions and their delivery attempts.
from pubsubpull.client import admin as _client_admin  # noqa: E402, F401
from pubsubpull.publisher.delivery import admin as _delivery_admin  # noqa: E402, F401
