"""Read your writes: where in the feed a request's changes are.

A publisher's response to a request that changed published data carries
``Pubsubpull-Position`` (:data:`pubsubpull.protocol.cursor.HEADER`): the feed
position of the request's last change. A subscriber whose applied position is
at or past it has applied every change the request made: the feed serves
changes in ``(txid, id)`` order and a transaction only after it ended, so
nothing of the request can come after its last change, and nothing before it
can still appear once a reader has passed it (``feed.py``).

How much it costs: nothing for a request that wrote nothing (the middleware
knows from the capture context which databases a request wrote). A writing
request costs one indexed query per database it wrote, after its
transactions committed (ATOMIC_REQUESTS' too: the middleware is outside it),
on the request's own connection. A request that wrote only unpublished tables
costs that query too, and finds nothing: no header.

In code, :func:`position` gives the same (see its docstring for what it
means outside a request and inside a transaction).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pubsubpull import conf
from pubsubpull.capture.context import _Root, current_root
from pubsubpull.protocol import cursor as cursors
from pubsubpull.publisher import feed

if TYPE_CHECKING:
    from django.http import HttpResponseBase

__all__ = ["HEADER", "position"]

HEADER = cursors.HEADER


def positions_of(root: _Root) -> list[tuple[str, cursors.Position]]:
    """``[(alias, position)]`` of the last change ``root`` made in each database it changed."""
    found = []
    for alias in root.written:
        at = feed.request_position(root.id, alias)
        if at is not None:
            found.append((alias, at))
    return found


def add_header(root: _Root, response: HttpResponseBase) -> None:
    """Put :data:`HEADER` on ``response`` when ``root`` changed published data."""
    if not root.written or not conf.position_header():
        return  # read-only (or turned off): no query
    found = positions_of(root)
    if found:
        response.headers[HEADER] = cursors.header_value(found, feed._database(None))


def position(using: str | None = None) -> str | None:
    """The feed position after which the changes made here are visible, as a cursor string.

    - Inside a request (with ``RequestMiddleware``) or a ``pubsubpull.context``
      block: the position of the last change that request or job has made so
      far in database ``using`` (default: the database whose change log
      Django's routers read), or None when it has made none there (nothing
      to wait for). It is what the response's ``Pubsubpull-Position`` header
      will say, if nothing more is written.
    - Outside both (a management command, the shell, after a block has
      ended): the position of the newest change in that database's log, which
      covers every change this code has committed (and others' committed
      before it: waiting for it may wait a little longer than needed), or
      None when the log is empty.
    - Inside an open transaction: the transaction's own changes so far count
      (this connection sees them). The feed serves them once it commits, so
      hand the position on after the commit (the response header is made
      after ``ATOMIC_REQUESTS``' commit); if it rolls back, the position names
      changes that never were, and a reader reaches it only with the
      changes after it.

    ::

        customer.save()
        return JsonResponse({"id": customer.pk, "position": pubsubpull.position()})
    """
    alias = feed._database(using)
    root = current_root()
    if root is None:
        at = feed.head_position(alias)
    elif alias not in root.written:
        return None
    else:
        at = feed.request_position(root.id, alias)
    return None if at is None else at.encode()
