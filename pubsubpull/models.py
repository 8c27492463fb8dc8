"""The app's models, gathered from each side for Django (app label ``pubsubpull``).

Each side keeps its tables beside its code; this module is where Django, the
admin and users find them all (``from pubsubpull.models import Change``).
"""

from pubsubpull.capture.models import Change, Request
from pubsubpull.client.models import (
    MirrorSeen,
    MirrorTombstone,
    ParkedEvent,
    PullCursor,
    ReceivedBatch,
    RemoteSubscription,
)
from pubsubpull.exceptions import ChangeLogIsReadOnly  # documented here
from pubsubpull.jobs.models import WorkerHeartbeat
from pubsubpull.publisher.delivery.models import Attempt, ParkedChange, Subscription
from pubsubpull.publisher.models import Horizon, ServiceToken

__all__ = [
    "Attempt",
    "Change",
    "ChangeLogIsReadOnly",
    "Horizon",
    "MirrorSeen",
    "MirrorTombstone",
    "ParkedChange",
    "ParkedEvent",
    "PullCursor",
    "ReceivedBatch",
    "RemoteSubscription",
    "Request",
    "ServiceToken",
    "Subscription",
    "WorkerHeartbeat",
]
