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


def decode(text: str, prefix: str, sizes: tuple[int, ...], what: str) -> bytes:
    """The bytes of a ``prefix``-and-base64 key text; :class:`InvalidKey` saying what is wrong."""
    shape = f"{what} is {prefix} followed by base64"
    if not isinstance(text, str) or not text.startswith(prefix):
        raise InvalidKey(shape)
    try:
        raw = base64.b64decode(text[len(prefix) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey(shape) from None
    if len(raw) not in sizes:
        expected = " or ".join(str(size) for size in sizes)
        raise InvalidKey(f"{what} holds {expected} bytes, not {len(raw)}")
    return raw


def public_key(text: str) -> Any:
    """The ed25519 public key of a ``whpk_`` text, to verify ``v1a`` signatures with."""
    module = ed25519()
    raw = decode(text, PUBLIC_KEY_PREFIX, (32,), "a v1a public key")
    return module.Ed25519PublicKey.from_public_bytes(raw)


def encode_public(raw: bytes) -> str:
    """The ``whpk_`` text of a raw 32-byte public key."""
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode()
