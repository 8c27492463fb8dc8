"""Feed cursors: the string a reader stores and sends back, and how two compare.

A cursor names a place in a publisher's change feed, ``(txid, id)``: every
change at or before it has been read. Both sides of the wire use this
module: the publisher hands cursors out (each change's ``cursor``, a page's
``cursor``, a snapshot's ``feed_position``, a subscription's ``position``);
the subscriber compares them to drop a change it has already handled. The
ordering is part of the contract: a later place in the feed has a greater
:class:`Position`, whatever the spelling of the string looks like.

::

    from pubsubpull.protocol import cursor

    done = cursor.parse(stored)                 # None: nothing stored, or not a cursor
    if cursor.is_new(change["cursor"], done):   # not at or before what was handled
        handle(change)
    if cursor.advances(page["cursor"], done):
        stored = page["cursor"]
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from dataclasses import dataclass

from pubsubpull.exceptions import InvalidCursor

#: The largest transaction id and change id a cursor can hold (PostgreSQL bigint).
MAX_ID = 2**63 - 1

_CURSOR = re.compile(r"c1\.(\d{1,19})\.(\d{1,19})")
_BASE64 = re.compile(r"[A-Za-z0-9_-]{1,60}")


@dataclass(frozen=True, order=True)
class Position:
    """A place in the feed: everything at or before ``(txid, id)`` has been read.

    Positions order as the feed does: by ``txid``, then by ``id``.
    """

    txid: int
    id: int

    def encode(self) -> str:
        """The opaque cursor string clients store and send back as ``after``."""
        raw = f"c1.{self.txid}.{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> Position:
        """Parse a cursor from :meth:`encode`; raise :class:`InvalidCursor` otherwise."""
        raw = ""
        if isinstance(cursor, str) and _BASE64.fullmatch(cursor):
            with contextlib.suppress(binascii.Error, ValueError):
                raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        match = _CURSOR.fullmatch(raw)
        # Only the canonical spelling: one cursor, one string.
        if match is None or cls(int(match[1]), int(match[2])).encode() != cursor:
            raise InvalidCursor(
                f"{cursor!r} is not a feed cursor. Use the cursor or next link of a "
                "previous page, or the feed_position of a snapshot; leave it out to "
                "start at the oldest retained change."
            )
        txid, id_ = int(match[1]), int(match[2])
        if txid > MAX_ID or id_ > MAX_ID:
            raise InvalidCursor(f"{cursor!r} is not a feed cursor (out of range).")
        return cls(txid, id_)

    @classmethod
    def coerce(cls, value: Position | str | None) -> Position | None:
        """A Position as it is, a cursor string decoded (or :class:`InvalidCursor`), None."""
        if value is None or isinstance(value, Position):
            return value
        return cls.decode(value)


#: Before the first change: a feed read from here starts at the oldest retained one.
START = Position(0, 0)

#: The greatest position: the longest cursor string there is.
END = Position(MAX_ID, MAX_ID)


def parse(value: Position | str | None) -> Position | None:
    """The position of a cursor string, or None when it is empty, None or not a cursor.

    For a reader comparing what it received: an unreadable cursor is "unknown",
    never an error (see :func:`is_new` and :func:`advances`).
    """
    if isinstance(value, Position):
        return value
    if not value:
        return None
    try:
        return Position.decode(value)
    except InvalidCursor:
        return None


def is_new(cursor: Position | str | None, done: Position | str | None) -> bool:
    """Whether a change at ``cursor`` is not at or before ``done`` (the last handled place).

    Unknown on either side (None, empty, not a cursor) counts as new: handling a
    change twice is allowed (at least once), skipping one is not.
    """
    at, handled = parse(cursor), parse(done)
    return at is None or handled is None or at > handled


def advances(cursor: Position | str | None, done: Position | str | None) -> bool:
    """Whether storing ``cursor`` in place of ``done`` moves the reader forward.

    An unknown ``cursor`` never does (a reader must not lose its place); any
    known one moves past an unknown ``done``.
    """
    following, handled = parse(cursor), parse(done)
    return following is not None and (handled is None or following > handled)


# -- Read your writes: the position a publisher's response carries ----------------

#: The response header naming where a request's changes are in the feed.
HEADER = "Pubsubpull-Position"

_DATABASE = re.compile(r"[A-Za-z*][A-Za-z0-9_.*:/%-]*")


def header_value(positions: list[tuple[str, Position]], default: str = "default") -> str:
    """The :data:`HEADER` value for ``[(database alias, position)]`` (not empty).

    The ``default`` database alone: the cursor alone. Otherwise (each
    database has its own feed) an RFC 8941 list of the cursors, each with a
    ``db`` parameter naming its database alias (a token, else a quoted
    string), in the order given.
    """
    if len(positions) == 1 and positions[0][0] == default:
        return positions[0][1].encode()
    members = []
    for alias, position in positions:
        name = (
            alias
            if _DATABASE.fullmatch(alias)
            else '"' + alias.replace("\\", "\\\\").replace('"', '\\"') + '"'
        )
        members.append(f"{position.encode()};db={name}")
    return ", ".join(members)


def from_header(value: str | Position, database: str | None = None) -> Position:
    """The position a :data:`HEADER` value gives (for ``database``, when it names several).

    A plain cursor is accepted as it is. Raises :class:`InvalidCursor` when
    the value is not one, or names several databases and ``database`` is not
    one of them.
    """
    if isinstance(value, Position):
        return value
    members: dict[str | None, str] = {}
    for member in str(value).split(","):
        token, _, parameter = member.strip().partition(";")
        name: str | None = None
        if parameter:
            key, _, name = parameter.strip().partition("=")
            if key.strip() != "db":
                raise InvalidCursor(f"{value!r} is not a {HEADER} value.")
            name = name.strip()
            if name.startswith('"') and name.endswith('"') and len(name) >= 2:
                name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        members[name] = token.strip()
    if len(members) == 1 and (database is None or database in members or None in members):
        return Position.decode(next(iter(members.values())))
    if database is None:
        raise InvalidCursor(
            f"{value!r} names positions in the feeds of several databases "
            f"({', '.join(sorted(str(m) for m in members))}); say which one your feed "
            "follows (database=...)."
        )
    if database not in members:
        raise InvalidCursor(
            f"{value!r} names no position in the feed of database {database!r}, only of "
            f"{', '.join(sorted(str(m) for m in members))}: the request changed nothing "
            "recorded there, or your feed is another database's."
        )
    return Position.decode(members[database])
