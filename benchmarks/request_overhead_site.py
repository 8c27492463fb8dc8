"""The service benchmarks/request_overhead.py serves: its settings, URLs and views.

The publisher test service's settings with DEBUG off, and two views: one that
reads a customer, one that makes one ORM update. BENCH_MIDDLEWARE=0 leaves
pubsubpull's RequestMiddleware out; everything else is identical.
BENCH_POSITION=0 keeps the capture but not the read-your-writes header (the
capture side's own CaptureMiddleware): the header's cost is the difference.
"""

import os
import random

from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from publisher.settings import *  # noqa: F403
from publisher.settings import DATABASES, MIDDLEWARE

DEBUG = False
# Persistent connections, as a busy service has: the benchmark measures the
# middleware, not PostgreSQL's connection start-up.
DATABASES["default"]["CONN_MAX_AGE"] = None
# So the benchmark can find the PostgreSQL backends serving each server.
_with = os.environ.get("BENCH_MIDDLEWARE", "1") != "0"
DATABASES["default"]["OPTIONS"] = {
    "application_name": f"request_overhead_{'with' if _with else 'without'}"
}
ROOT_URLCONF = __name__  # this module's urlpatterns, below
if not _with:
    MIDDLEWARE = [m for m in MIDDLEWARE if not m.startswith("pubsubpull.")]
elif os.environ.get("BENCH_POSITION", "1") == "0":
    MIDDLEWARE = [
        "pubsubpull.capture.middleware.CaptureMiddleware"
        if m == "pubsubpull.middleware.RequestMiddleware"
        else m
        for m in MIDDLEWARE
    ]

CUSTOMERS = 1000  # rows the writing view picks from, so workers rarely wait on a row lock


def read(request):
    from django.http import JsonResponse

    from customers.models import Customer

    customer = Customer.objects.get(pk=random.randint(1, CUSTOMERS))
    return JsonResponse({"id": customer.pk, "name": customer.name})


def write(request):
    from django.db.models.functions import Now
    from django.http import JsonResponse

    from customers.models import Customer

    updated = Customer.objects.filter(pk=random.randint(1, CUSTOMERS)).update(updated=Now())
    return JsonResponse({"updated": updated})


urlpatterns = [path("read/", read), path("write/", csrf_exempt(write))]
