"""Handlers the billing service runs on the customers service's events."""

import os
import time

from .models import Welcome


def welcome(event, via="push"):
    """Send a welcome to each new user (comms): once per insert of auth.user."""
    if event.model == "auth.user" and event.op == "insert":
        # The welcome is recorded in the handler's transaction, so it commits
        # exactly when the event is marked handled.
        Welcome.objects.create(
            user_id=event.pk, username=event.data["username"], sequence=event.sequence, via=via
        )


def welcome_pulled(event):
    """The same, for a pull of the feed."""
    delay = float(os.environ.get("BILLING_HANDLER_DELAY", "0"))
    if delay:
        time.sleep(delay)  # the tests kill the worker in the middle of a page
    welcome(event, via="pull")


def show(event):
    """Print each event: the demo's pull from scratch (manage.py pubsubpull_pull)."""
    delay = float(os.environ.get("BILLING_SHOW_DELAY", "0"))
    if delay:
        time.sleep(delay)  # a slow handler: the pull outlasts a lease
    name = (event.data or event.old or {}).get("name", "")
    print(f"{event.op:<8} {event.model} {event.pk} {name}".rstrip())
