"""Billing's own API: a request that changes a customer at customers, then reads its copy.

Read your writes across services: customers answers with the feed position
of the change (``Pubsubpull-Position``); billing waits until its mirror has
applied it, so the invoice it makes shows the country it just set.
"""

import json

import httpx
from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from pubsubpull.exceptions import WaitTimeout

from .mirrors import customers
from .models import CustomerCountry


@csrf_exempt
@require_http_methods(["PUT"])
def invoice(request, pk):
    """Move customer ``pk`` to ``country`` at customers, then invoice from the local copy."""
    data = json.loads(request.body or b"{}")
    site = settings.CUSTOMERS_URL.removesuffix("pubsubpull/")
    answer = httpx.put(f"{site}customers/{pk}/", json={"country_id": data["country"]}, timeout=10)
    answer.raise_for_status()
    position = answer.headers.get("Pubsubpull-Position")
    try:
        # Push mode: still short after a second (delivery slow, or the request's
        # last changes were to models the subscription does not carry)? Pull once.
        customers.wait_for(position, timeout=float(data.get("timeout", 10)), catch_up_after=1.0)
    except WaitTimeout as e:
        return JsonResponse(
            {"error": "not_yet_applied", "detail": str(e), "position": position},
            status=503,
            headers={"Retry-After": "1"},
        )
    copy = CustomerCountry.objects.get(remote_id=pk)
    return JsonResponse({"customer": pk, "country": copy.country, "position": position})
