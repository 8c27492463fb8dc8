"""Django admin for subscriptions: state, lag, attempts; pause, resume, replay, park.

And the parked changes (the dead-letter list): look at them, send them again.

``pubsubpull/admin.py`` imports this module; nothing here is public API.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from pubsubpull.publisher import feed
from pubsubpull.publisher.delivery import parking, subscriptions
from pubsubpull.publisher.delivery.models import Attempt, ParkedChange, Subscription


class ReplayForm(forms.Form):
    cursor = forms.CharField(
        required=False, help_text="A feed cursor: deliver every change after it."
    )
    since = forms.DateTimeField(
        required=False, help_text="Or a time: deliver every change made since then."
    )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if bool(data.get("cursor")) == bool(data.get("since")):
            raise forms.ValidationError("Give either a cursor or a time.")
        if data.get("cursor"):
            try:
                data["position"] = feed.Position.decode(data["cursor"])
            except feed.InvalidCursor as e:
                raise forms.ValidationError(str(e)) from None
        return data


def position_since(subscription: Subscription, since) -> feed.Position:
    """The position just before the first change of the subscription's models since ``since``."""
    return feed.position_since(since, subscription.model_labels)


class AttemptInline(admin.TabularInline):
    model = Attempt
    readonly_fields = ["at", "webhook_id", "changes", "status", "duration", "error", "worker"]
    fields = tuple(readonly_fields)  # the same (to mypy a list[str] is no list of field groups)
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ["-at"]
    show_change_link = True

    def get_queryset(self, request):
        # The newest few; the attempts list has the rest.
        queryset = super().get_queryset(request)
        recent = queryset.order_by("-at").values_list("pk", flat=True)[:20]
        return queryset.filter(pk__in=list(recent))


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "owner",
        "state",
        "callback",
        "models_list",
        "lag",
        "delivered",
        "failures",
        "next_attempt_at",
        "last_success_at",
    ]
    list_filter = ["state"]
    search_fields = ["name", "owner", "callback"]
    actions = ["pause", "resume", "replay", "park"]
    inlines = [AttemptInline]
    readonly_fields = [
        "owner",
        "name",
        "framing",
        "signature",
        "state",
        "state_reason",
        "lag",
        "attempts_link",
        "parked_link",
        "position_cursor",
        "delivered",
        "pending_batch",
        "pending_count",
        "pending_changes",
        "failures",
        "failing_since",
        "next_attempt_at",
        "last_attempt_at",
        "last_success_at",
        "last_error",
        "lease_owner",
        "lease_expires",
        "created",
        "updated",
    ]
    fields = ["callback", "batch_size", "whole_transactions", *readonly_fields]

    def has_add_permission(self, request):
        return False  # subscribers PUT their own, and get the secret then

    @admin.display(description="models")
    def models_list(self, obj):
        return ", ".join(obj.model_labels)

    @admin.display(description="lag")
    def lag(self, obj):
        lag = subscriptions.lag(obj)
        return f"{lag['changes']} changes, {lag['seconds']:.0f} s"

    @admin.display(description="position")
    def position_cursor(self, obj):
        return feed.Position(obj.position_txid, obj.position_id).encode()

    @admin.display(description="attempts")
    def attempts_link(self, obj):
        url = reverse("admin:pubsubpull_attempt_changelist") + f"?subscription__id__exact={obj.pk}"
        return format_html('<a href="{}">{} attempts</a>', url, obj.attempts.count())

    @admin.display(description="parked changes")
    def parked_link(self, obj):
        url = (
            reverse("admin:pubsubpull_parkedchange_changelist")
            + f"?subscription__id__exact={obj.pk}"
        )
        return format_html('<a href="{}">{} parked</a>', url, obj.parked.count())

    @admin.display(description="changes of the pending batch")
    def pending_changes(self, obj):
        if not obj.pending_batch:
            return "—"
        pending = subscriptions.pending(obj) or {}
        ids = ", ".join(str(i) for i in pending.get("changes", []))
        return f"{ids} ({pending.get('attempts', 0)} attempts)"

    @admin.action(description="Park the change it is stopped at, and go on with the rest")
    def park(self, request, queryset):
        who = f"admin:{request.user.get_username()}"
        for subscription in queryset:
            if not subscription.pending_batch:
                self.message_user(
                    request,
                    f"{subscription.name}: nothing is failing, so nothing was parked.",
                    messages.WARNING,
                )
                continue
            change = parking.next_change(subscription)
            if change is None:
                continue
            try:
                parking.park(subscription, change.id, by=who)
            except parking.CannotPark as e:  # delivered meanwhile
                self.message_user(request, f"{subscription.name}: {e}", messages.WARNING)
                continue
            self.message_user(
                request,
                f"{subscription.name}: parked change {change.id} ({change.model} "
                f"{change.pk}); delivery goes on after it.",
                messages.SUCCESS,
            )

    @admin.action(description="Pause delivery")
    def pause(self, request, queryset):
        for subscription in queryset:
            subscriptions.pause(subscription)
        self.message_user(request, f"Paused {len(queryset)} subscription(s).")

    @admin.action(description="Resume delivery (retry now, in order from the position)")
    def resume(self, request, queryset):
        for subscription in queryset:
            subscriptions.resume(subscription)
        self.message_user(request, f"Resumed {len(queryset)} subscription(s).")

    @admin.action(description="Replay from a cursor or a time…")
    def replay(self, request, queryset):
        form = ReplayForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            for subscription in queryset:
                position = form.cleaned_data.get("position") or position_since(
                    subscription, form.cleaned_data["since"]
                )
                subscriptions.replay(subscription, position)
            self.message_user(
                request, f"Replaying {len(queryset)} subscription(s).", messages.SUCCESS
            )
            return None
        return TemplateResponse(
            request,
            "pubsubpull/replay.html",
            {
                **self.admin_site.each_context(request),
                "title": "Replay subscriptions",
                "form": form,
                "subscriptions": queryset,
                "opts": self.model._meta,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            },
        )


@admin.register(Attempt)
class AttemptAdmin(admin.ModelAdmin):
    list_display = ["at", "subscription", "webhook_id", "changes", "status", "duration", "error"]
    list_filter = ["status"]
    search_fields = ["webhook_id", "subscription__name"]
    list_select_related = ["subscription"]
    date_hierarchy = "at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ParkedChange)
class ParkedChangeAdmin(admin.ModelAdmin):
    """Parked changes: what was set aside, why, and sending it again."""

    list_display = [
        "change_id",
        "subscription",
        "model",
        "object_pk",
        "reason",
        "parked_at",
        "parked_by",
        "resent_at",
        "resent_status",
    ]
    list_filter = ["model", "resent_status"]
    search_fields = ["subscription__name", "object_pk", "reason"]
    list_select_related = ["subscription"]
    actions = ["resend"]
    readonly_fields = [
        "subscription",
        "change_id",
        "txid",
        "model",
        "object_pk",
        "reason",
        "parked_at",
        "parked_by",
        "change",
        "attempts",
        "resent_at",
        "resent_status",
        "resent_error",
    ]
    fields = tuple(readonly_fields)  # the same (to mypy a list[str] is no list of field groups)

    def has_add_permission(self, request):
        return False  # parked from the subscription (action) or the API

    def has_change_permission(self, request, obj=None):
        return False

    @admin.action(description="Send again to the subscription's callback")
    def resend(self, request, queryset):
        who = f"admin:{request.user.get_username()}"
        for parked in queryset.select_related("subscription"):
            try:
                parking.resend(parked, by=who)
            except parking.CannotResend as e:
                self.message_user(request, f"Change {parked.change_id}: {e}", messages.ERROR)
                continue
            if parked.resent:
                self.message_user(
                    request,
                    f"Change {parked.change_id}: acknowledged ({parked.resent_status}).",
                    messages.SUCCESS,
                )
            else:
                self.message_user(
                    request,
                    f"Change {parked.change_id}: not acknowledged ({parked.resent_error}); "
                    "still parked.",
                    messages.WARNING,
                )
