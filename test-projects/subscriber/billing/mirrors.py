"""Billing's copy of customers: the mirror the worker runs (``customers.pull()`` starts it)."""

from django.conf import settings

import pubsubpull

from .models import CustomerCountry

customers = pubsubpull.mirror(
    settings.CUSTOMERS_URL + "models/customers.customer/instances/",
    CustomerCountry,
    fields={"name": "name", "country": "country"},
    key="remote_id",
    auth=settings.CUSTOMERS_TOKEN,
)
