"""Hypothesis strategies for the input that broke endpoints: what fuzzers leave out.

Schemathesis and hypothesis draw text that UTF-8 can encode, so they never
send a lone surrogate, though a JSON string can carry one (``"\\ud800"``) and
a URL can carry its bytes (``%ED%A0%80``); and a schema's bodies are only as
deep as the schema. These strategies put lone surrogates, NULs and deep
nesting into any JSON body, query parameter or path parameter.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

# Characters PostgreSQL cannot store or UTF-8 cannot encode.
BAD_CHARACTERS = ["\ud800", "\udbff", "\udc00", "\udfff", "\x00"]

# The same, as they arrive in a URL (and their invalid UTF-8 cousins).
BAD_URL_BYTES = ["%00", "%ED%A0%80", "%ED%BF%BF", "%F0%9F", "%C0%AF", "%FF", "%"]

# Depths around the limits that matter: the API's (64), the receiver's (512),
# and Python's recursion limit (about 1000).
DEPTHS = [63, 65, 511, 513, 999, 1001, 20_000]

bad_text = st.builds(
    lambda before, bad, after: before + bad + after,
    st.text(max_size=4),
    st.sampled_from(BAD_CHARACTERS),
    st.text(max_size=4),
)


def nested(text: str, depth: int, kind: str) -> str:
    """JSON ``text`` inside ``depth`` arrays or objects (as text: too deep for json.dumps)."""
    if kind == "list":
        return "[" * depth + text + "]" * depth
    return '{"a":' * depth + text + "}" * depth


def _places(value: Any, path: tuple = ()) -> list[tuple[tuple, str]]:
    """Every string and every key in ``value``: (path, "value" or "key")."""
    found: list[tuple[tuple, str]] = []
    if isinstance(value, str):
        found.append((path, "value"))
    elif isinstance(value, dict):
        for key, child in value.items():
            found.append(((*path, key), "key"))
            found.extend(_places(child, (*path, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.extend(_places(child, (*path, index)))
    return found


def _replace(value: Any, path: tuple, where: str, bad: str) -> Any:
    if not path:
        return bad if where == "value" else value
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        if where == "key" and not rest:
            return {(bad if k == head else k): v for k, v in value.items()}
        return {k: (_replace(v, rest, where, bad) if k == head else v) for k, v in value.items()}
    copy = list(value)
    copy[head] = _replace(copy[head], rest, where, bad)
    return copy


def poisoned_body(data: st.DataObject, value: Any, depths: list[int] = DEPTHS) -> bytes:
    """``value`` as JSON with a bad string in one of its strings or keys, or nested too deep.

    Lone surrogates and NULs are sent as ``\\u`` escapes, as any client's JSON
    encoder writes them.
    """
    places = _places(value)
    ways = ["string", "string", "deep", "deep-inside"] if places else ["deep"]
    how = data.draw(st.sampled_from(ways))
    if how == "string":
        path, where = data.draw(st.sampled_from(places))
        return json.dumps(_replace(value, path, where, data.draw(bad_text))).encode()
    depth = data.draw(st.sampled_from(depths))
    kind = data.draw(st.sampled_from(["list", "object"]))
    if how == "deep" or not isinstance(value, dict) or not value:
        return nested(json.dumps(value), depth, kind).encode()
    key = data.draw(st.sampled_from(sorted(value)))
    marker = "\ufdd0pubsubpull-deep\ufdd0"
    text = json.dumps({**value, key: marker})
    inner = nested(json.dumps(value[key]), depth, kind)
    return text.replace(json.dumps(marker), inner, 1).encode()


def as_body(value: Any) -> bytes:
    """``value`` as JSON text, as a client sends it."""
    return json.dumps(value).encode()


def poisoned_url_value(data: st.DataObject, value: Any) -> str:
    """``value`` (a query or path parameter) percent-encoded, with bad bytes in it."""
    text = quote(str(value), safe="")
    bad = data.draw(
        st.one_of(st.sampled_from(BAD_URL_BYTES), st.sampled_from(["%5B" * 5000, "%7B" * 5000]))
    )
    at = data.draw(st.integers(0, len(text)))
    return text[:at] + bad + text[at:]
