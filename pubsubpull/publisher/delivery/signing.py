"""Standard Webhooks signatures (https://www.standardwebhooks.com/): ``v1`` and ``v1a``.

A subscription signs with a symmetric ``whsec_…`` secret (``v1``,
HMAC-SHA256: the default) or with an ed25519 secret key ``whsk_…`` (``v1a``,
asymmetric), chosen by its ``signature``. A receiver verifies a ``v1``
notification with any Standard Webhooks library and the secret it got when
it subscribed::

    from standardwebhooks import Webhook
    payload = Webhook(secret).verify(body, headers)

and a ``v1a`` one with the public key ``whpk_…`` the subscription states
(``public_key``): only the publisher holds the secret key, so a receiver (or
whoever reads its configuration) cannot forge a notification. The signed
content is the same for both, ``{webhook-id}.{webhook-timestamp}.{body}``;
a ``v1a`` signature is the base64 of its 64-byte ed25519 signature.

During a rotation's grace period both keys sign, separated by a space in
``webhook-signature``, so either one verifies (a switch from ``v1`` to
``v1a`` is a rotation too: the old secret's ``v1`` signature goes beside the
new key's ``v1a`` one for the grace period).

``v1a`` needs the ``cryptography`` package (``pip install
django-pubsubpull[ed25519]``); without it, asking for ``v1a`` is refused
with :class:`~pubsubpull.exceptions.MissingDependency`.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from typing import Any

from standardwebhooks import Webhook

from pubsubpull import keys
from pubsubpull.exceptions import InvalidKey

PREFIX = "whsec_"
SECRET_KEY_PREFIX = keys.SECRET_KEY_PREFIX
PUBLIC_KEY_PREFIX = keys.PUBLIC_KEY_PREFIX

#: The signature schemes a subscription may choose; the first is the default.
SCHEMES = ("v1", "v1a")


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and 32 random bytes in base64."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


available = keys.available


def _raw(private_key: Any) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization

    seed = private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return seed, public


def new_secret_key() -> str:
    """A fresh ed25519 secret key: ``whsk_`` and base64 of its seed and public key (64 bytes)."""
    seed, public = _raw(keys.ed25519().Ed25519PrivateKey.generate())
    return SECRET_KEY_PREFIX + base64.b64encode(seed + public).decode()


def _private_key(secret_key: str) -> Any:
    """The ed25519 key of a ``whsk_`` text; :class:`InvalidKey` saying what is wrong."""
    if not isinstance(secret_key, str) or not secret_key.startswith(SECRET_KEY_PREFIX):
        found = secret_key[:6] if isinstance(secret_key, str) else type(secret_key).__name__
        raise InvalidKey(
            f"must be an ed25519 secret key, whsk_ and base64 (got {found!r}…): the "
            "publisher signs with it, so a public key (whpk_) or a symmetric secret "
            "(whsec_) cannot be used"
        )
    raw = keys.payload(secret_key, SECRET_KEY_PREFIX)
    if raw is None:
        raise InvalidKey("must be whsk_ followed by base64")
    if len(raw) not in (32, 64):
        raise InvalidKey(
            f"holds {len(raw)} bytes; an ed25519 secret key is 32 (the seed) or 64 "
            "(the seed and the public key)"
        )
    key = keys.ed25519().Ed25519PrivateKey.from_private_bytes(raw[:32])
    if len(raw) == 64 and _raw(key)[1] != raw[32:]:
        raise InvalidKey("holds a public key that is not the seed's: the key is damaged")
    return key


def check_secret_key(secret_key: Any) -> str:
    """``secret_key`` if it is a usable ``whsk_`` key, else :class:`InvalidKey`."""
    _private_key(secret_key)
    return secret_key


def public_key(secret_key: str) -> str:
    """The ``whpk_`` public key of a ``whsk_`` secret key: what receivers verify with."""
    return keys.encode_public(_raw(_private_key(secret_key))[1])


def scheme_of(secret: str) -> str:
    """``v1a`` for a ``whsk_`` secret key, ``v1`` for a ``whsec_`` secret."""
    return "v1a" if secret.startswith(SECRET_KEY_PREFIX) else "v1"


def _sign(secret: str, webhook_id: str, timestamp: datetime, body: str) -> str:
    if scheme_of(secret) == "v1":
        return Webhook(secret).sign(webhook_id, timestamp, body)
    content = f"{webhook_id}.{int(timestamp.timestamp())}.{body}".encode()
    return "v1a," + base64.b64encode(_private_key(secret).sign(content)).decode()


def signature(secrets_: list[str], webhook_id: str, timestamp: datetime, body: str) -> str:
    """The ``webhook-signature`` header value: one ``v1,…`` or ``v1a,…`` per secret."""
    return " ".join(_sign(s, webhook_id, timestamp, body) for s in secrets_ if s)
