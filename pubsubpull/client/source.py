"""Talking to a publisher over HTTP: its service document, instance pages, the feed.

Every answer that is not a 200 becomes a :class:`SourceError` that says whether
to retry and when (``retry_after`` from the publisher's ``Retry-After``), and a
410 (the publisher's log has been pruned past our cursor) is :class:`Gone`.
"""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from pubsubpull import conf
from pubsubpull.exceptions import Gone, InvalidNotification, SourceError
from pubsubpull.protocol import cloudevents
from pubsubpull.protocol.retry_after import parse_retry_after
from pubsubpull.version import __version__

USER_AGENT = f"django-pubsubpull/{__version__} (pull)"


def split_source(url: str) -> tuple[str, list[str] | None]:
    """The service document URL and the models a source URL names.

    ``…/pubsubpull/models/shop.customer/instances/`` names one model; any other
    URL is taken as the service document itself (all models it lists).
    """
    parts = urlsplit(url)
    segments = parts.path.split("/")
    if "models" in segments:
        at = len(segments) - 1 - segments[::-1].index("models")
        rest = [s for s in segments[at + 1 :] if s]
        if len(rest) == 2 and rest[1] == "instances":
            path = "/".join(segments[:at]) + "/"
            return urlunsplit((parts.scheme, parts.netloc, path, "", "")), [rest[0]]
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, "")), None


_client: httpx.Client | None = None
_client_lock = threading.Lock()


def http_client() -> httpx.Client:
    """The process's HTTP client for publishers (pooled, thread-safe)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(
                headers={"user-agent": USER_AGENT, "accept": "application/json"},
                timeout=httpx.Timeout(conf.pull_timeout(), connect=5.0),
                follow_redirects=False,
            )
        return _client


def request(
    method: str,
    url: str,
    *,
    token: str = "",
    params: dict[str, Any] | None = None,
    json: Any = None,
    timeout: float | None = None,
) -> httpx.Response:
    """One request to a publisher; raises SourceError unless it answered 2xx."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    kwargs: dict[str, Any] = {"params": params, "headers": headers}
    if json is not None:
        kwargs["json"] = json
    if timeout is not None:
        kwargs["timeout"] = httpx.Timeout(timeout, connect=5.0)
    try:
        response = http_client().request(method, url, **kwargs)
    except httpx.HTTPError as e:
        raise SourceError(f"{method} {url}: {type(e).__name__}: {e}".rstrip(": ")) from e
    if 200 <= response.status_code < 300:
        return response
    detail = ""
    try:
        detail = response.json().get("detail", "")
    except (ValueError, AttributeError):
        detail = response.text[:300]
    message = f"{method} {response.request.url} answered {response.status_code}: {detail}".rstrip()
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if response.status_code == 410:
        raise Gone(message, 410, retry_after)
    raise SourceError(message, response.status_code, retry_after)


# Every digit as "0", everything else as " ": a run of 19 zeros is a number
# (or digits in a string) orjson might not keep exact.
_DIGITS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_NUMBER = b"0" * 19


def parse_json(content: bytes) -> Any:
    """Parse a publisher's JSON with orjson (a 5,000-instance page in half json's time).

    orjson reads an integer beyond 64 bits as a float, and refuses what json
    accepts (NaN, 1e400): those bodies go to json, so a value never changes.
    """
    if content.translate(_DIGITS).find(_LONG_NUMBER) >= 0:
        return json.loads(content)
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return json.loads(content)


def get_json(url: str, *, token: str = "", params=None, timeout=None) -> dict[str, Any]:
    response = request("GET", url, token=token, params=params, timeout=timeout)
    try:
        return parse_json(response.content)
    except ValueError as e:
        raise SourceError(f"GET {url} did not answer JSON") from e


def get_events_page(url: str, *, token: str = "", params=None, timeout=None) -> dict[str, Any]:
    """A feed page asked for as a CloudEvents batch, read into the default page's shape.

    ``{"changes": [<the events' data>], "cursor": <the Pubsubpull-Cursor header>}``.
    """
    params = {**(params or {}), "format": "cloudevents"}
    response = request("GET", url, token=token, params=params, timeout=timeout)
    cursor = response.headers.get("pubsubpull-cursor")
    try:
        batch = cloudevents.read_batch(parse_json(response.content))
    except (ValueError, InvalidNotification) as e:
        raise SourceError(f"GET {url} did not answer a CloudEvents batch: {e}") from e
    if not cursor:
        raise SourceError(f"GET {url} answered a CloudEvents batch without a Pubsubpull-Cursor")
    return {"changes": batch.changes, "cursor": cursor}


class Publisher:
    """A publisher's service document, read once, and URLs from it."""

    def __init__(self, service_url: str, token: str = ""):
        self.service_url = service_url
        self.token = token
        self._document: dict[str, Any] | None = None

    @property
    def document(self) -> dict[str, Any]:
        if self._document is None:
            self._document = get_json(self.service_url, token=self.token)
        return self._document

    def labels(self) -> list[str]:
        """Every model the publisher lets us read."""
        return [m["model"] for m in self.document["models"]]

    def instances_url(self, label: str) -> str:
        for model in self.document["models"]:
            if model["model"] == label:
                return model["instances"]
        raise SourceError(
            f"{self.service_url} does not publish {label!r} to us (its service document "
            f"lists {', '.join(self.labels()) or 'no model'}); check the label and the "
            "token's scope."
        )

    def changes_url(self) -> str:
        return self.document["links"]["changes"].split("?")[0]

    def subscription_url(self, name: str) -> str:
        return self.document["links"]["subscriptions"] + f"{name}/"
