"""The subscribing side in Django's admin: pull cursors, parked events, remote subscriptions.

``pubsubpull/admin.py`` imports this module; nothing here is public API.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from pubsubpull.client import parking, pulling
from pubsubpull.client.models import ParkedEvent, PullCursor, RemoteSubscription


class ParkedEventInline(admin.TabularInline):
    model = ParkedEvent
    fields = readonly_fields = ("model", "object_pk", "op", "error", "attempts", "last_attempt_at")
    extra = 0
    max_num = 0
    show_change_link = True


@admin.register(PullCursor)
class PullCursorAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "state",
        "phase",
        "rows",
        "snapshots",
        "failures",
        "parked_link",
        "last_success_at",
        "short_error",
    ]
    list_filter = ["state", "phase"]
    search_fields = ["name", "source", "handler"]
    actions = ["resume", "park", "pause"]
    inlines = [ParkedEventInline]
    readonly_fields = [
        "name",
        "source",
        "service_url",
        "handler",
        "model_labels",
        "state",
        "phase",
        "snapshot_models",
        "snapshot_next",
        "feed_position",
        "snapshots",
        "rows",
        "parked_link",
        "park_failures",
        "failures",
        "last_error",
        "last_error_at",
        "last_success_at",
        "next_run_at",
        "lease_owner",
        "lease_expires",
        "created",
    ]
    fields = ["page_size", "whole_transactions", "every", "once", *readonly_fields]

    def has_add_permission(self, request):
        return False  # pubsubpull.pull() / mirror.pull() / manage.py pubsubpull_pull make them

    @admin.display(description="error")
    def short_error(self, obj):
        return obj.last_error[:120]

    @admin.display(description="parked")
    def parked_link(self, obj):
        url = reverse("admin:pubsubpull_parkedevent_changelist") + f"?cursor__id__exact={obj.pk}"
        return format_html('<a href="{}">{} parked</a>', url, obj.parked.count())

    @admin.action(description="Resume (run again now: the cause is fixed)")
    def resume(self, request, queryset):
        ids = pulling.resume(queryset)
        self.message_user(request, f"Resumed {len(ids)} cursor(s).")

    @admin.action(description="Park the events that fail on the next page, and go on")
    def park(self, request, queryset):
        ids = pulling.park(queryset)
        self.message_user(
            request,
            f"{len(ids)} cursor(s) will set aside what fails on their next page "
            "(see Parked events) and go on in order.",
        )

    @admin.action(description="Pause")
    def pause(self, request, queryset):
        self.message_user(request, f"Paused {pulling.pause(queryset)} cursor(s).")


@admin.register(ParkedEvent)
class ParkedEventAdmin(admin.ModelAdmin):
    list_display = ["created", "cursor", "model", "object_pk", "op", "attempts", "short_error"]
    list_filter = ["cursor", "model", "op"]
    search_fields = ["object_pk", "error"]
    list_select_related = ["cursor"]
    actions = ["reapply"]
    readonly_fields = [
        "cursor",
        "position",
        "model",
        "object_pk",
        "op",
        "event",
        "error",
        "attempts",
        "created",
        "last_attempt_at",
    ]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="error")
    def short_error(self, obj):
        return obj.error[:120]

    @admin.action(description="Re-apply (oldest first; an object's later events wait for it)")
    def reapply(self, request, queryset):
        applied, failing = parking.reapply(queryset.select_related("cursor"))
        level = messages.SUCCESS if not failing else messages.WARNING
        self.message_user(
            request, f"Applied {applied} parked event(s); {failing} still fail.", level
        )


@admin.register(RemoteSubscription)
class RemoteSubscriptionAdmin(admin.ModelAdmin):
    list_display = ["name", "publisher", "owner", "received", "last_received_at", "created"]
    search_fields = ["name", "publisher"]
    readonly_fields = [
        "publisher",
        "owner",
        "name",
        "callback",
        "model_labels",
        "public_key",
        "position",
        "received",
        "created",
        "last_received_at",
    ]
    # The secret and the token never show (a v1a public key is public).
    fields = tuple(readonly_fields)

    def has_add_permission(self, request):
        return False  # pubsubpull.subscribe() makes them, with the secret
