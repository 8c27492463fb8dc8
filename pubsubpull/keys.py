"""Standard Webhooks ed25519 keys (``v1a``), shared by the publisher and the receiver.

The publisher signs with a secret key ``whsk_…`` (base64 of the 32-byte seed,
optionally followed by the 32-byte public key) and states its public key
``whpk_…`` (base64 of 32 bytes), with which a receiver verifies. Both need
the ``cryptography`` package (``pip install django-pubsubpull[ed25519]``);
without it :func:`ed25519` raises :class:`~pubsubpull.exceptions.MissingDependency`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pubsubpull.exceptions import InvalidKey, MissingDependency

SECRET_KEY_PREFIX = "whsk_"
PUBLIC_KEY_PREFIX = "whpk_"


def ed25519() -> Any:
    """``cryptography``'s ed25519 module, or :class:`MissingDependency` saying what to install."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519 as module
    except ImportError:
        raise MissingDependency(
            "v1a (ed25519) signatures need the cryptography package: "
            "pip install 'django-pubsubpull[ed25519]'."
        ) from None
    return module


def available() -> bool:
    """Whether ``v1a`` signatures can be made and verified here."""
    try:
        ed25519()
    except MissingDependency:
        return False
    return True


def payload(text: str, prefix: str) -> bytes | None:
    """The bytes a ``prefix``-and-base64 key text holds; None when it is not one.

    Each side words its own error (the signer's says which key it wanted).
    """
    if not isinstance(text, str) or not text.startswith(prefix):
        return None
    try:
        return base64.b64decode(text[len(prefix) :], validate=True)
    except (binascii.Error, ValueError):
        return None


def public_key(text: str) -> Any:
    """The ed25519 public key of a ``whpk_`` text, to verify ``v1a`` signatures with."""
    module = ed25519()
    raw = payload(text, PUBLIC_KEY_PREFIX)
    if raw is None:
        raise InvalidKey("a v1a public key is whpk_ and base64")
    if len(raw) != 32:
        raise InvalidKey(f"a v1a public key is 32 bytes, not {len(raw)}")
    return module.Ed25519PublicKey.from_public_bytes(raw)


def encode_public(raw: bytes) -> str:
    """The ``whpk_`` text of a raw 32-byte public key."""
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode()
