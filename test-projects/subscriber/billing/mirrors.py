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

# Billing's copy of only the customers in New Zealand (a filtered mirror: the
# customers service sends only those rows, and tells when one leaves). Into
# the same table as ``customers``: a test runs one or the other.
nz_customers = pubsubpull.mirror(
    settings.CUSTOMERS_URL + "models/customers.customer/instances/",
    CustomerCountry,
    fields={"name": "name", "country": "country"},
    key="remote_id",
    auth=settings.CUSTOMERS_TOKEN,
    name="mirror:nz",
    where={"country": "NZ"},
    filters={"customers.customer": {"fields": ["name", "country"]}},
)
