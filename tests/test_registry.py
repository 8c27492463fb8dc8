"""register() tells a user what is wrong with a registration, and what to do."""

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured

import pubsubpull
from customers.models import Contract, Customer


class ProxyCustomer(Customer):
    class Meta:
        proxy = True
        app_label = "customers"


def test_registrations_know_what_they_publish():
    customer = pubsubpull.get_registration(Customer)
    assert customer.label == "customers.customer"
    assert "notes" not in customer.published_columns
    assert customer.excluded_columns == ["notes"]
    contract = pubsubpull.get_registration("customers.Contract")
    assert contract.published_columns == ["id", "customer_id", "amount", "currency"]
    assert pubsubpull.get_registration(User).excluded_columns == ["password"]
    assert [r.label for r in pubsubpull.registrations()] == [
        "auth.user",
        "customers.address",
        "customers.contract",
        "customers.country",
        "customers.customer",
        "ledger.entry",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fields": ["name"], "exclude": ["email"]}, "fields= or exclude=, not both"),
        ({"exclude": ["nickname"]}, "names nickname, which is not a concrete field"),
        ({"fields": ["name", "age"]}, "Choose from: "),
        ({"exclude": ["id"]}, "cannot exclude the primary key 'id'"),
        ({"exclude": "notes"}, "lists of field names, not a single string"),
    ],
)
def test_bad_registrations_are_refused(kwargs, message):
    before = pubsubpull.get_registration(Customer)
    with pytest.raises(ImproperlyConfigured, match=message):
        pubsubpull.register(Customer, **kwargs)
    assert pubsubpull.get_registration(Customer) == before


def test_models_without_a_table_of_their_own_are_refused():
    with pytest.raises(ImproperlyConfigured, match="proxy models have no table"):
        pubsubpull.register(ProxyCustomer)
    with pytest.raises(ImproperlyConfigured, match="takes a model class"):
        pubsubpull.register("customers.Customer")


def test_register_is_a_decorator_that_returns_the_class():
    before = pubsubpull.get_registration(Contract)
    try:
        decorated = pubsubpull.register(fields=["amount"])(Contract)
        assert decorated is Contract
        assert pubsubpull.get_registration(Contract).published_columns == ["id", "amount"]
    finally:
        pubsubpull.register(Contract, fields=before.fields)
    assert pubsubpull.get_registration(Contract) == before
