"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

A receiver verifies a notification with any Standard Webhooks library and the
``whsec_…`` secret it got when it subscribed::

    from standardwebhooks import Webhook
    payload = Webhook(secret).verify(body, headers)

During a secret rotation's grace period both secrets sign, separated by a
space in ``webhook-signature``, so either one verifies.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime

from standardwebhooks import Webhook

PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and 32 random bytes in base64."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signature(secrets_: list[str], webhook_id: str, timestamp: datetime, body: str) -> str:
    """The ``webhook-signature`` header value: one ``v1,…`` per secret."""
    return " ".join(Webhook(s).sign(webhook_id, timestamp, body) for s in secrets_ if s)
