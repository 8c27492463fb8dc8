"""Parse JSON that arrives over HTTP: strictly, with bounded nesting, storable.

Both sides of the wire read request bodies through :func:`loads`: the
publisher's API (``PUT subscriptions/<name>/``) and the subscriber's
receiver. It refuses, with an :class:`InvalidJSON` that says what and where,
what Python's ``json`` accepts but a service must not:

- bytes that are not UTF-8 (RFC 8259 §8.1), and ``NaN``/``Infinity``;
- nesting deeper than ``max_depth`` (Python's parser would raise
  ``RecursionError`` near a thousand levels, and code walking the value
  later sooner);
- strings or keys holding a NUL (``\\u0000``) or a lone surrogate
  (``\\ud800``): PostgreSQL ``text`` and ``jsonb`` cannot store them, and a
  lone surrogate cannot even be encoded as UTF-8 for a response.

Example::

    from pubsubpull.protocol.jsonbody import InvalidJSON, loads

    loads(b'{"models": ["customers.customer"]}')   # {'models': [...]}
    loads(b'{"models": ["\\\\ud800"]}')             # InvalidJSON: $.models[0] ...
"""

from __future__ import annotations

import json
import re
from typing import Any

from pubsubpull.exceptions import InvalidJSON

#: Nesting allowed by default: generous for request bodies, far from the
#: interpreter's recursion limit.
MAX_DEPTH = 64

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(text: str) -> str | None:
    """Why ``text`` cannot be stored in PostgreSQL or sent as UTF-8, or None."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found[0] == "\x00":
        return "a NUL character (\\u0000), which PostgreSQL cannot store"
    return (
        f"a lone surrogate (\\u{ord(found[0]):04x}), which is not a character: "
        "send the pair, or the character itself"
    )


def _no_constant(name: str) -> Any:
    raise InvalidJSON(f"{name} is not JSON: send a number, or null")


def _key(path: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=True)}]"


def _check(value: Any, max_depth: int, strings: bool) -> None:
    """Walk ``value`` without recursion: depth, and (if ``strings``) every string."""
    pending: list[tuple[Any, int, str]] = [(value, 1, "$")]
    while pending:
        item, depth, path = pending.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                raise InvalidJSON(f"the body is nested more than {max_depth} levels deep")
            for key, child in item.items():
                if strings and (why := unstorable(key)):
                    raise InvalidJSON(f"a key in {path} holds {why}")
                if isinstance(child, dict | list) or (strings and isinstance(child, str)):
                    pending.append((child, depth + 1, _key(path, key)))
        elif isinstance(item, list):
            if depth > max_depth:
                raise InvalidJSON(f"the body is nested more than {max_depth} levels deep")
            for index, child in enumerate(item):
                if isinstance(child, dict | list) or (strings and isinstance(child, str)):
                    pending.append((child, depth + 1, f"{path}[{index}]"))
        elif isinstance(item, str) and (why := unstorable(item)):
            raise InvalidJSON(f"the string at {path} holds {why}")


def loads(body: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``body``, or :class:`InvalidJSON` saying what is wrong."""
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidJSON(f"the body is not UTF-8 (at byte {e.start})") from None
        # Only a \u escape can make a NUL or a surrogate out of UTF-8 text.
        strings = "\\u" in text
    else:
        text, strings = body, True
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidJSON(f"the body is nested more than {max_depth} levels deep") from None
    except InvalidJSON:
        raise
    except ValueError as e:  # JSONDecodeError, or an integer too long to convert
        raise InvalidJSON(f"the body is not JSON: {e}") from None
    _check(value, max_depth, strings)
    return value
