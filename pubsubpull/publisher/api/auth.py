"""Who is calling, and which published models they may read.

Two ways in, and nothing for anonymous callers unless ``ANONYMOUS_MODELS``
says so:

- **Service tokens**: ``Authorization: Bearer <token>``, created with
  ``manage.py pubsubpull_token create NAME --models app.model``, stored as a
  SHA-256 hash, scoped to model labels. A bearer header wins over any session:
  a wrong token is 401 even for a logged-in browser.
- **Django authentication**: whatever sets ``request.user`` (sessions, a
  remote-user middleware, ...). The user needs the model's ``view``
  permission. Unsafe methods (PUT, DELETE) on a session are CSRF-checked.

Views call :func:`authenticate` and then ``caller.can_read(label)``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone

from pubsubpull import conf
from pubsubpull.capture.registry import get_registration
from pubsubpull.exceptions import AccessDenied, NotAuthenticated

TOKEN_PREFIX = "psp_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits); store only :func:`hash_token` of it."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def create_token(name: str, models: list[str]) -> tuple[Any, str]:
    """Create a ServiceToken; return it and the token text (shown only now)."""
    from pubsubpull.publisher.models import ServiceToken

    token = new_token()
    record = ServiceToken.objects.create(
        name=name, key_hash=hash_token(token), prefix=token[:12], scope=list(models)
    )
    return record, token


@dataclass
class Caller:
    """An authenticated caller: a Django user, a service token, or anonymous."""

    user: Any = None
    token: Any = None

    @property
    def name(self) -> str:
        if self.token is not None:
            return f"token {self.token.name}"
        if self.user is not None:
            return f"user {self.user.get_username()}"
        return "anonymous"

    def can_read(self, label: str) -> bool:
        """May this caller read the published model ``label`` (instances and changes)?"""
        if self.token is not None:
            return self.token.can_read(label)
        if self.user is not None:
            registration = get_registration(label)
            if registration is None:
                return False
            opts = registration.model._meta
            return self.user.has_perm(f"{opts.app_label}.view_{opts.model_name}")
        return label in conf.anonymous_models()


def _bearer(request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer":
        # Not ours (Basic for a proxy, say): let Django's user decide.
        return None
    credentials = credentials.strip()
    if not credentials:
        raise NotAuthenticated("The Authorization header has no bearer token.")
    return credentials


def has_credentials(request) -> bool:
    """Whether the request carries a bearer token or a logged-in user."""
    user = getattr(request, "user", None)
    return _bearer(request) is not None or bool(user is not None and user.is_authenticated)


def authenticate(request) -> Caller:
    """The caller of ``request``; raises NotAuthenticated or AccessDenied (CSRF)."""
    from pubsubpull.publisher.models import ServiceToken

    token_text = _bearer(request)
    if token_text is not None:
        token = ServiceToken.objects.filter(key_hash=hash_token(token_text)).first()
        if token is None or not token.is_active:
            raise NotAuthenticated("The bearer token is not valid (unknown or revoked).")
        now = timezone.now()
        # At most one write a minute per token: reads stay reads.
        if token.last_used is None or (now - token.last_used).total_seconds() > 60:
            ServiceToken.objects.filter(pk=token.pk).update(last_used=now)
        return Caller(token=token)

    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        if request.method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
            # A session cookie rides along with cross-site requests; a
            # bearer token does not. Check CSRF like Django's middleware: used
            # as a check only, it is given no response to get and no view.
            middleware = CsrfViewMiddleware(lambda r: None)  # type: ignore[arg-type]
            reason = middleware.process_view(request, None, (), {})  # type: ignore[arg-type]
            if reason is not None:
                raise AccessDenied("CSRF verification failed.")
        return Caller(user=user)

    if conf.anonymous_models():
        return Caller()
    raise NotAuthenticated(
        "Authentication required: send Authorization: Bearer <token> (manage.py "
        "pubsubpull_token create) or log in as a user with view permission."
    )
