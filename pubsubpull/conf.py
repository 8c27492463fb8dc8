"""pubsubpull's settings: one ``PUBSUBPULL = {...}`` dict in the project's settings.

Read them with ``conf.get(name)``; every key and its default is listed here.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DEFAULTS: dict[str, Any] = {
    # The app whose migrations install triggers for published models of
    # installed packages (auth.User, say). Models of your own apps get theirs
    # in their own app's migrations.
    "MIGRATIONS_APP": None,
    # Pull over HTTP (pubsubpull.urls). Pages of instances and changes hold
    # PAGE_SIZE items unless the caller asks for another ?limit=, at most
    # MAX_PAGE_SIZE.
    "PAGE_SIZE": 100,
    "MAX_PAGE_SIZE": 5000,
    # The longest ?wait= a change feed request may long-poll, in seconds.
    "MAX_WAIT": 60,
    # Model labels anonymous callers may read; none by default. Everyone else
    # needs a service token scoped to the model, or a user with its view
    # permission.
    "ANONYMOUS_MODELS": [],
}


def get(name: str) -> Any:
    """The value of ``PUBSUBPULL[name]``, or its default."""
    if name not in DEFAULTS:
        raise ImproperlyConfigured(f"pubsubpull has no setting {name!r}.")
    configured = getattr(settings, "PUBSUBPULL", {})
    return configured.get(name, DEFAULTS[name])


def check_keys() -> list[str]:
    """Names in the PUBSUBPULL setting that pubsubpull does not know."""
    configured = getattr(settings, "PUBSUBPULL", {})
    if not isinstance(configured, dict):
        return ["<PUBSUBPULL must be a dict>"]
    return sorted(set(configured) - set(DEFAULTS))
