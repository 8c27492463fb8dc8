"""Every exception pubsubpull raises on purpose, under one base.

``except pubsubpull.exceptions.PubsubpullError`` catches them all. Each keeps
the built-in base it had (``ValueError`` for bad input, ``PermissionError``
for a refused model), so code that caught those still does. The modules that
raise them also export them (``pubsubpull.client.source.SourceError``,
``pubsubpull.models.ChangeLogIsReadOnly``, ``feed.InvalidCursor`` ...), as
the docs show.

This module imports nothing of pubsubpull: both sides of the wire use it.
"""

from __future__ import annotations

from typing import Any


class PubsubpullError(Exception):
    """The base of every exception pubsubpull raises on purpose."""


# -- Capture --------------------------------------------------------------------


class ChangeLogIsReadOnly(PubsubpullError):
    """Raised when code tries to write the change log through the ORM."""


# -- The wire, both sides ---------------------------------------------------------


class InvalidJSON(PubsubpullError, ValueError):
    """The body is not JSON a service can accept; the message says why and where."""


class InvalidCursor(PubsubpullError, ValueError):
    """A cursor string that this server did not hand out."""


class InvalidNotification(PubsubpullError, ValueError):
    """A body that is not a pubsubpull notification."""


class InvalidFilter(PubsubpullError, ValueError):
    """A filter (``where`` / ``changed`` / ``fields``) that cannot be used.

    ``field`` says where, e.g. ``filters.shop.customer.where.score__gte``.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


# -- The publisher: feed and snapshots ---------------------------------------------


class CursorExpired(PubsubpullError):
    """The change log has been pruned past the cursor: changes after it may be gone.

    The reader must take a new snapshot (its ``feed_position`` is a valid cursor).
    ``cursor`` and ``horizon`` are feed Positions.
    """

    def __init__(self, cursor: Any, horizon: Any):
        self.cursor = cursor
        self.horizon = horizon
        super().__init__(
            "The change log has been pruned past this cursor, so changes after it may "
            "be missing. Take a new snapshot of the instances and follow the feed from "
            "its feed_position."
        )


class SeveralDatabases(PubsubpullError, ValueError):
    """A feed asked for models whose changes are recorded in different databases.

    Each database has its own change log, ordered by its own positions, so a
    page (and its cursor) covers the models of one database.
    """

    def __init__(self, groups: list[list[str]]):
        self.groups = groups
        feeds = " and ".join("models=" + ",".join(labels) for labels in groups)
        super().__init__(
            "These models are recorded in the change logs of different databases, and "
            "a feed (and its cursor) follows one database's log: "
            + "; ".join(", ".join(labels) for labels in groups)
            + f". Follow them as separate feeds: {feeds}."
        )


class InvalidAfter(PubsubpullError, ValueError):
    """An ``after`` token that is not from a previous page of this model."""


# -- The publisher: HTTP API ----------------------------------------------------------


class ApiError(PubsubpullError):
    """Raised inside a view to answer with a JSON error."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra


class NotAuthenticated(PubsubpullError):
    """No credentials, or wrong ones: answer 401."""


class AccessDenied(PubsubpullError):
    """Known caller, not allowed: the API answers 403 with its JSON error.

    Named apart from Django's ``PermissionDenied``, which it is not (that one
    would reach Django's own 403 handler).
    """


# -- The publisher: subscriptions and delivery ----------------------------------------


class InvalidSubscription(PubsubpullError, ValueError):
    """A subscription request that cannot be accepted; ``errors`` maps field to message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


class NotAllowed(PubsubpullError, PermissionError):
    """The caller may not read a model it wants to subscribe to."""


class CallbackRefused(PubsubpullError, ValueError):
    """The callback URL may not be used; the message says why and what to do."""


class CannotPark(PubsubpullError):
    """The change asked for is not the one the subscription would send next."""


class CannotResend(PubsubpullError):
    """The subscription's owner may not receive the change (any more)."""


class Unsubscribed(PubsubpullError):
    """The subscription was deleted while a worker was delivering it."""


# -- The subscriber: pulling --------------------------------------------------------


class SourceError(PubsubpullError):
    """The publisher could not be read; try again later (``retry_after`` seconds if known)."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class Gone(SourceError):
    """410: the feed cursor is older than the publisher's log; take a new snapshot."""


class WaitTimeout(PubsubpullError, TimeoutError):
    """``wait_for()`` gave up: the changes up to a position were not applied here in time.

    ``position`` is the position waited for, ``applied`` the one applied
    locally when it gave up (None: nothing yet), ``timeout`` the seconds waited.
    """

    def __init__(self, what: str, position: Any, applied: Any, timeout: float):
        self.position = position
        self.applied = applied
        self.timeout = timeout
        super().__init__(
            f"{what} had not applied the publisher's changes up to {position} after "
            f"{timeout:g} s (applied up to {applied or 'nothing yet'}). Is its worker "
            "running (pubsubpull_worker), or its subscription delivering? Wait longer, "
            "or answer your caller that the data is not there yet (503 with Retry-After)."
        )


class LostLease(PubsubpullError):
    """Another worker took the cursor (ours expired): leave the page to it."""


class PageCannotApply(PubsubpullError):
    """The handler's database refused the page (IntegrityError, DataError): trying
    the same page again cannot help, so the cursor is ``blocked`` until the
    operator resumes it (the cause fixed) or parks the failing events."""

    def __init__(self, error: Exception, position: str):
        super().__init__(f"{type(error).__name__}: {error}".strip())
        self.error = error
        self.position = position


class InvalidKey(PubsubpullError, ValueError):
    """A Standard Webhooks key (``whsk_``, ``whpk_``) that is not one; the message says why."""


class MissingDependency(PubsubpullError, ImportError):
    """An optional feature needs a package that is not installed; the message names it."""


class InvalidOption(PubsubpullError, ValueError):
    """An option given to a pubsubpull function that it does not take; the message says which."""
