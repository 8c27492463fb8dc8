"""Billing's copy of customers: the mirror the worker runs (``customers.pull()`` starts it)."""

from django.conf import settings

import pubsubpull

from .models import CustomerCard, CustomerCountry

customers = pubsubpull.mirror(
    settings.CUSTOMERS_URL + "models/customers.customer/instances/",
    CustomerCountry,
    fields={"name": "name", "country": "country"},
    key="remote_id",
    auth=settings.CUSTOMERS_TOKEN,
)

# Cards: two mapped fields; the rest of the card is billing's own (defaults).
cards = pubsubpull.mirror(
    settings.CUSTOMERS_URL + "models/customers.customer/instances/",
    CustomerCard,
    fields={"name": "name", "country": "country"},
    auth=settings.CUSTOMERS_TOKEN,
    name="mirror:cards",
)
