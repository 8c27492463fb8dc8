"""``manage.py pubsubpull_pull`` beside a running ``pubsubpull_worker``: billing's processes.

The command's cursor is its own while it runs (the worker, sweeping every
0.2 s with leases of 3 s, never takes it), and a worker takes it over when a
killed command's lease runs out.
"""

from __future__ import annotations

import sys
import time

import pytest

from customers.models import Customer

from . import services
from .services import MANAGE, Process, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

billing_service, billing = services.billing_service, services.billing  # the fixtures


def pull_args(billing, name: str) -> list[str]:
    return [
        "pubsubpull_pull",
        billing.customers_url + "models/customers.customer/instances/",
        "--handler",
        "billing.handlers.show",
        "--name",
        name,
        "--page-size",
        "4",
        "--token",
        billing.customers_token,
    ]


def state(billing, name: str) -> tuple:
    rows = billing.sql(
        "SELECT phase, rows, lease_owner, state FROM pubsubpull_pullcursor WHERE name = %s", [name]
    )
    return rows[0] if rows else ()


def test_a_pull_from_the_command_line_is_not_taken_by_the_worker_beside_it(billing):
    customers = Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(24))
    # Six pages of 4 at a quarter of a second per row: six seconds, two leases.
    billing.extra_env["BILLING_SHOW_DELAY"] = "0.25"
    worker = billing.start_worker()
    output = billing.manage(*pull_args(billing, "backfill"), timeout=300)

    assert "caught up: 24 rows handled in all" in output
    for customer in customers:
        assert output.count(f"snapshot customers.customer {customer.pk} {customer.name}\n") == 1
    assert "customers.customer" not in worker.output()  # the worker ran none of its pages
    phase, rows, owner, _ = state(billing, "backfill")
    assert (phase, rows) == ("feed", 24)
    # Let go when it exits: the worker may follow it from here.
    Customer.objects.create(name="after")
    wait_until(lambda: "insert   customers.customer" in worker.output(), timeout=60)
    assert not owner.startswith("command:")


def test_a_killed_pull_command_leaves_its_cursor_to_the_worker_after_the_lease(billing):
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(24))
    billing.extra_env["BILLING_SHOW_DELAY"] = "0.25"
    billing.start_worker()
    command = Process([sys.executable, str(MANAGE), *pull_args(billing, "killed")], billing.env())
    billing.processes.append(command)
    wait_until(lambda: (state(billing, "killed") or (0, 0))[1] >= 8, timeout=120)
    assert state(billing, "killed")[2].startswith("command:")
    command.kill()
    killed_at = time.monotonic()
    done = state(billing, "killed")[1]
    assert done % 4 == 0 and done < 24  # whole pages only

    # The worker takes it when the lease (3 s here) runs out, and finishes it.
    wait_until(lambda: not state(billing, "killed")[2].startswith("command:"), timeout=60)
    assert time.monotonic() - killed_at > 1.0
    wait_until(lambda: state(billing, "killed")[:2] == ("feed", 24), timeout=120)
