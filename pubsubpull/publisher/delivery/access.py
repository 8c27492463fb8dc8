"""May a subscription's owner still receive what it subscribed to?

A subscription outlives the request that made it: the token can be revoked or
narrowed, the user deactivated, deleted or stripped of a permission. Delivery
asks :func:`refusal` before every batch (and before a parked change is sent
again), with the same rules the HTTP API applies to a reading caller
(:meth:`pubsubpull.publisher.api.auth.Caller.can_read`), so access ends deliveries the
moment it ends reads.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from pubsubpull.publisher.api.auth import Caller
from pubsubpull.publisher.models import ServiceToken


def _caller(owner: str) -> tuple[Caller | None, str]:
    """The owner as a caller, or None and why it cannot be one."""
    kind, _, key = owner.partition(":")
    if kind == "token":
        token = ServiceToken.objects.filter(pk=key).first() if key.isdigit() else None
        if token is None:
            return None, (
                f"Its service token ({owner}) was deleted: nothing is sent. "
                "Subscribe again with a valid token."
            )
        if not token.is_active:
            return None, (
                f"Its service token {token.name!r} was revoked: nothing is sent until "
                "the token is active again."
            )
        return Caller(token=token), ""
    if kind == "user":
        user_model = get_user_model()
        try:
            user = user_model._default_manager.filter(pk=key).first()
        except (ValueError, TypeError, ValidationError):  # not a key of this user model
            user = None
        if user is None:
            return None, (
                f"Its user ({owner}) was deleted: nothing is sent. "
                "Subscribe again as an existing user."
            )
        if not user.is_active:
            return None, (
                f"Its user {user.get_username()!r} is inactive: nothing is sent until "
                "the account is active again."
            )
        return Caller(user=user), ""
    return None, f"Its owner {owner!r} is neither a service token nor a user."


def refusal(owner: str, models: list[str]) -> str:
    """Why ``owner`` may not receive changes of ``models`` now; empty if it may.

    One model it may no longer read stops the whole subscription: sending
    the others would skip changes of that one, and delivery never skips.
    """
    caller, reason = _caller(owner)
    if caller is None:
        return reason
    lost = [label for label in models if not caller.can_read(label)]
    if lost:
        return (
            f"{caller.name[0].upper()}{caller.name[1:]} may no longer read "
            f"{', '.join(lost)}, so nothing of this subscription is sent. Give the access "
            "back, or change the subscription's models to what it may read."
        )
    return ""
