"""Operators can see and repair the triggers without migrations."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from customers.models import Address, Country, Customer
from pubsubpull import checks
from pubsubpull.capture import publishing
from pubsubpull.models import Change
from tests.conftest import restore_v3

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = StringIO()
    call_command("pubsubpull_triggers", *args, stdout=out)
    return out.getvalue()


def states() -> dict[str, str]:
    return {row.table: row.state for row in publishing.status()}


def break_things():
    with connection.cursor() as cursor:
        cursor.execute(
            "DROP TRIGGER pubsubpull_insert ON customers_address; "
            "DROP TRIGGER pubsubpull_update ON customers_address; "
            "DROP TRIGGER pubsubpull_delete ON customers_address; "
            "DROP TRIGGER pubsubpull_truncate ON customers_address; "
            "COMMENT ON TRIGGER pubsubpull_update ON customers_country IS 'pubsubpull 0000'; "
            "CREATE TRIGGER pubsubpull_insert AFTER INSERT ON customers_internalnote "
            "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
            "EXECUTE FUNCTION pubsubpull_capture('customers.internalnote', 'id')"
        )


def test_a_migrated_project_has_every_trigger_installed():
    assert set(states().values()) == {"installed"}
    out = run()
    assert "customers.customer" in out and "installed" in out
    assert checks.check_triggers(databases=["default"]) == []


def test_missing_outdated_and_orphaned_triggers_are_reported_and_repaired():
    break_things()
    assert states() == {
        "auth_user": "installed",
        "customers_address": "missing",
        "customers_contract": "installed",
        "customers_country": "outdated",
        "customers_customer": "installed",
        "customers_internalnote": "orphaned",
    }
    warnings = checks.check_triggers(databases=["default"])
    assert [w.id for w in warnings] == ["pubsubpull.W001", "pubsubpull.W001"]
    assert "customers.address (customers_address) is missing" in warnings[0].msg
    assert "customers.country (customers_country) is outdated" in warnings[1].msg

    out = run("list")
    assert "Run `pubsubpull_triggers install`" in out

    # Changes to a table without its trigger are lost until it is repaired.
    customer = Customer.objects.create(name="Ada")
    Address.objects.create(customer=customer, line1="1 Main St", city="Paris")
    assert not Change.objects.filter(model="customers.address").exists()

    with pytest.raises(CommandError, match="1 table"):
        run("install")  # the orphan still needs attention
    assert states()["customers_address"] == "installed"
    assert states()["customers_country"] == "installed"
    out = run("prune")
    assert "pruned customers_internalnote" in out
    assert set(states().values()) == {"installed"}

    Address.objects.create(customer=customer, line1="2 Main St", city="Lyon")
    assert Change.objects.filter(model="customers.address").count() == 1
    Country.objects.create(code="fr", name="France")
    assert Change.objects.filter(model="customers.country").count() == 1


@pytest.mark.django_db(transaction=True)
def test_switching_to_capture_version_4_shows_outdated_and_install_makes_each_log(settings):
    """Without migrations: ``pubsubpull_triggers install`` puts version 4 in place."""
    settings.PUBSUBPULL = {"CAPTURE_VERSION": 4}
    assert set(states().values()) == {"outdated"}
    try:
        run("install")
        assert set(states().values()) == {"installed"}
        Customer.objects.create(name="v4")
        (change,) = Change.objects.filter(model="customers.customer")
        assert change.new["name"] == "v4"
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pubsubpull_change")
            assert cursor.fetchone() == (0,)
    finally:
        settings.PUBSUBPULL = {}
        restore_v3()
    assert set(states().values()) == {"installed"}
