"""Views that write in every way the audit trail must follow.

Plain JSON views, CSRF-exempt because the tests call them as an API would.
"""

import json

from django.contrib.auth import login
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

import pubsubpull
from ledger.models import Entry

from .models import Customer, InternalNote

put_only = require_http_methods(["PUT"])


def _body(request):
    return json.loads(request.body or b"{}")


def _customer(customer):
    return {"id": customer.pk, "name": customer.name, "newsletter": customer.newsletter}


@require_GET
def customer_list(request):
    """Read-only: a request that changes nothing leaves no trace."""
    return JsonResponse({"customers": [_customer(c) for c in Customer.objects.order_by("pk")]})


@csrf_exempt
@require_http_methods(["GET", "PUT"])
def customer(request, pk):
    """GET reads one customer; PUT creates or updates it with the ORM."""
    if request.method == "GET":
        return JsonResponse(_customer(get_object_or_404(Customer, pk=pk)))
    customer, created = Customer.objects.update_or_create(pk=pk, defaults=_body(request))
    return JsonResponse(_customer(customer), status=201 if created else 200)


@csrf_exempt
@put_only
def customers_bulk(request):
    """Create many customers with one bulk_create."""
    created = Customer.objects.bulk_create([Customer(**row) for row in _body(request)])
    return JsonResponse({"created": len(created)}, status=201)


@csrf_exempt
@put_only
def country_put(request, code):
    """Raw SQL through Django's cursor."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO customers_country (code, name) VALUES (%s, %s) "
            "ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name",
            [code, _body(request)["name"]],
        )
    return JsonResponse({"code": code})


@csrf_exempt
@put_only
def customer_fail(request, pk):
    """Writes, then fails: rolled back only if the request is atomic."""
    Customer.objects.filter(pk=pk).update(name=_body(request)["name"])
    raise RuntimeError("the view failed after writing")


@csrf_exempt
@transaction.non_atomic_requests
@put_only
def customer_fail_after_commit(request, pk):
    """Commits a write, then fails: the change stays, the request answers 500."""
    with transaction.atomic():
        Customer.objects.filter(pk=pk).update(name=_body(request)["name"])
    raise RuntimeError("the view failed after committing")


def _token_user(request):
    """Authenticate like DRF's TokenAuthentication does: inside the view.

    The "token" is the username: this is a test service.
    """
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Token":
        return None
    return User.objects.filter(username=token, is_active=True).first()


@csrf_exempt
@put_only
def api_newsletter(request, pk):
    """A DRF-style view: request.user is anonymous until the view authenticates."""
    user = _token_user(request)
    if user is None:
        return JsonResponse({"detail": "Authentication credentials were not provided."}, status=401)
    request.user = user  # what rest_framework.request.Request.user's setter does
    customer = get_object_or_404(Customer, pk=pk)
    customer.newsletter = _body(request)["newsletter"]
    customer.save(update_fields=["newsletter", "updated"])
    return JsonResponse(_customer(customer))


@csrf_exempt
@put_only
def signup(request):
    """Writes anonymously, logs the new user in, writes again as that user."""
    data = _body(request)
    user = User.objects.create_user(data["username"], password=data["password"])
    login(request, user)
    customer = Customer.objects.create(name=data["username"])
    return JsonResponse(_customer(customer), status=201)


@csrf_exempt
@put_only
def customer_points(request, pk):
    """Writes to both databases: the customer in default, the ledger in other."""
    data = _body(request)
    customer = get_object_or_404(Customer, pk=pk)
    Entry.objects.create(customer_id=customer.pk, points=data["points"], reason=data["reason"])
    customer.newsletter = True
    customer.save(update_fields=["newsletter", "updated"])
    return JsonResponse({"points": data["points"]})


@csrf_exempt
@put_only
async def async_customer_put(request, pk):
    """An async view: the ORM runs in a worker thread."""
    updated = await Customer.objects.filter(pk=pk).aupdate(**_body(request))
    return JsonResponse({"updated": updated})


@csrf_exempt
@put_only
def customer_note(request, pk):
    """Writes only an unpublished table: no change is recorded, no position is given."""
    note = InternalNote.objects.create(customer_id=pk, text=_body(request)["text"])
    return JsonResponse({"note": note.pk}, status=201)


@csrf_exempt
@transaction.non_atomic_requests
@put_only
def customer_moves(request, pk):
    """Several transactions, several writes: a rename, then each country in turn.

    Answers the position ``pubsubpull.position()`` gave after each write.
    """
    data = _body(request)
    positions = []
    with transaction.atomic():
        Customer.objects.filter(pk=pk).update(name=data["name"])
        positions.append(pubsubpull.position())
    for country in data["countries"]:
        Customer.objects.filter(pk=pk).update(country_id=country)  # autocommit: its own
        positions.append(pubsubpull.position())
    return JsonResponse({"positions": positions})
