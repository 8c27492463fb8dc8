"""The scripted tour of the demo (``./demo.sh --tour``): runs by itself, exits 0.

Each step does what a person would do (the publisher's admin over HTTP, a
sign-up, a pull from the command line) and checks the outcome in the other
service, so the tour fails loudly if any part of the chain does not work.
"""

from __future__ import annotations

import json
import re
import time

import httpx

WAIT = 60  # seconds any one step may take


def say(text: str) -> None:
    print(f"\ntour: {text}", flush=True)


def query(service, code: str):
    """Run ``code`` (which prints one JSON value) in ``service``'s Django shell."""
    out = service.manage("shell", "-c", code, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def eventually(what: str, check):
    deadline = time.monotonic() + WAIT
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"tour: gave up waiting for {what}")
        time.sleep(0.5)


class Admin:
    """The publisher's Django admin, driven over HTTP like a browser."""

    def __init__(self, base: str, username: str, password: str):
        self.base = base
        self.http = httpx.Client(base_url=base, timeout=30)
        self.http.get("/admin/login/")
        response = self.post(
            "/admin/login/?next=/admin/",
            {"username": username, "password": password, "next": "/admin/"},
        )
        if response.status_code != 302:
            raise RuntimeError("tour: could not log in to the publisher's admin")

    def post(self, path: str, data: dict) -> httpx.Response:
        self.http.get(path)
        token = self.http.cookies.get("csrftoken")
        return self.http.post(
            path,
            data={**data, "csrfmiddlewaretoken": token},
            headers={"Referer": self.base + path},
        )

    def add(self, model_path: str, data: dict) -> str:
        response = self.post(f"/admin/{model_path}/add/", data)
        if response.status_code != 302:
            errors = [
                re.sub(r"<[^>]+>", " ", e).strip()
                for e in re.findall(r'<ul class="errorlist[^>]*>(.*?)</ul>', response.text, re.S)
            ]
            raise RuntimeError(f"tour: the admin refused {model_path}: {errors}")
        return response.headers["location"]


def run_tour(demo) -> None:
    publisher, subscriber = demo.publisher, demo.subscriber

    # The demo's databases outlive a run: this run's people get their own names.
    run = time.strftime("%H%M%S")
    ada, grace = f"Ada Lovelace {run}", f"grace-{run}"

    say("1. An administrator adds a customer in the publisher's admin.")
    admin = Admin(publisher.url, "admin", "admin")
    countries = query(
        publisher,
        "import json\nfrom customers.models import Country\n"
        "print(json.dumps(list(Country.objects.values_list('code', flat=True))))",
    )
    for code, name in (("GB", "United Kingdom"), ("FR", "France"), ("DE", "Germany")):
        if code not in countries:
            admin.add("customers/country", {"code": code, "name": name})
    admin.add(
        "customers/customer",
        {"name": ada, "email": "ada@example.com", "country": "GB", "notes": "VIP"},
    )
    print(f"   added {ada} (GB)")

    say("2. The audit trail says who did it, how, and what changed.")
    trail = query(
        publisher,
        "import json\n"
        "from pubsubpull.models import Change\n"
        "c = Change.objects.for_model('customers.customer').filter(op='insert')"
        ".select_related('request').last()\n"
        "print(json.dumps({'user': c.user.username, 'method': c.request.method,"
        " 'path': c.request.path, 'diff': {k: v[1] for k, v in c.diff.items()}}))",
    )
    print(f"   {trail['user']} via {trail['method']} {trail['path']}")
    print(f"   new values: {trail['diff']}")
    assert trail["user"] == "admin", trail
    assert "notes" not in trail["diff"], "an excluded field reached the change log"

    say("3. Billing's mirror copies the customer's name and country (pull mode).")

    def mirrored() -> list:
        return query(
            subscriber,
            "import json\nfrom billing.models import CustomerCountry\n"
            "print(json.dumps(list(CustomerCountry.objects.values_list('name', 'country'))))",
        )

    eventually("the mirror", lambda: [ada, "GB"] in mirrored())
    print(f"   billing has {[row for row in mirrored() if row[0] == ada]}")

    say("4. Ada moves to France in the admin; the mirror follows.")
    customer_id = query(
        publisher,
        f"from customers.models import Customer\nprint(Customer.objects.get(name={ada!r}).pk)",
    )
    response = admin.post(
        f"/admin/customers/customer/{customer_id}/change/",
        {"name": ada, "email": "ada@example.com", "country": "FR", "notes": "VIP"},
    )
    assert response.status_code == 302, response.status_code
    eventually("the mirror to follow the move", lambda: [ada, "FR"] in mirrored())
    print(f"   billing has {[row for row in mirrored() if row[0] == ada]}")

    say("5. Grace signs up; billing is notified (a signed PUT) and welcomes her once.")
    response = httpx.put(
        publisher.url + "/signup/",
        json={"username": grace, "password": "correct horse battery staple"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    welcome = eventually(
        "the welcome",
        lambda: query(
            subscriber,
            "import json\nfrom billing.models import Welcome\n"
            f"print(json.dumps(list(Welcome.objects.filter(username={grace!r})"
            ".values_list('username', 'via'))))",
        ),
    )
    print(f"   billing's welcomes for {grace}: {welcome}")
    assert len(welcome) == 1, welcome

    say("6. A pull from scratch on the command line: every customer, then the feed.")
    # Its cursor is the tour's own: from scratch each run, gone afterwards.
    forget_pull = (
        "from pubsubpull.client.models import PullCursor\n"
        "PullCursor.objects.filter(name='tour-pull').delete()"
    )
    subscriber.manage("shell", "-c", forget_pull)
    pulled = subscriber.manage(
        "pubsubpull_pull",
        publisher.url + "/pubsubpull/models/customers.customer/instances/",
        "--handler",
        "billing.handlers.show",
        "--name",
        "tour-pull",
        "--token",
        subscriber.env["CUSTOMERS_TOKEN"],
        capture_output=True,
        text=True,
        check=False,
    )
    if pulled.returncode != 0:
        raise RuntimeError(f"tour: the pull failed:\n{pulled.stdout}\n{pulled.stderr}")
    subscriber.manage("shell", "-c", forget_pull)
    print("   " + pulled.stdout.strip().replace("\n", "\n   "))
    assert ada in pulled.stdout, pulled.stdout + pulled.stderr

    say("7. However many times the demo ran, billing has one subscription, and it delivers.")
    subscriptions = query(
        publisher,
        "import json\nfrom pubsubpull.publisher.delivery.models import Attempt, Subscription\n"
        "subs = Subscription.objects.filter(name='billing-users')\n"
        "print(json.dumps({'states': [s.state for s in subs],\n"
        "    'refused': Attempt.objects.filter(subscription__in=subs, status=401).count()}))",
    )
    print(f"   billing-users at customers: {subscriptions}")
    assert subscriptions == {"states": ["active"], "refused": 0}, subscriptions

    say("8. Filters: the publisher serves only the rows and fields a reader asks for.")
    # A reader of French customers' names only (docs/filters.rst), as curl would ask.
    auth = {"Authorization": f"Bearer {subscriber.env['CUSTOMERS_TOKEN']}"}
    filters = json.dumps(
        {"customers.customer": {"where": {"country": "FR", "name": ada}, "fields": ["name"]}}
    )
    snapshot = httpx.get(
        publisher.url + "/pubsubpull/models/customers.customer/instances/",
        params={"filters": filters},
        headers=auth,
        timeout=30,
    ).json()
    print(f"   French customers named {ada!r}: {[i['fields'] for i in snapshot['instances']]}")
    assert [i["fields"] for i in snapshot["instances"]] == [{"id": customer_id, "name": ada}]
    # Ada moves back to the United Kingdom: out of the filter, so the filtered
    # feed (the snapshot's changes link keeps the filters) says delete.
    response = admin.post(
        f"/admin/customers/customer/{customer_id}/change/",
        {"name": ada, "email": "ada@example.com", "country": "GB", "notes": "VIP"},
    )
    assert response.status_code == 302, response.status_code

    def left():
        body = httpx.get(snapshot["changes"], headers=auth, timeout=30).json()
        return body if any(c["op"] == "delete" for c in body["changes"]) else None

    page = eventually("the filtered feed to see Ada leave", left)
    moved = [(c["op"], c["old"]) for c in page["changes"]]
    print(f"   the filtered feed after she moved to GB: {moved[-1:]}")
    assert moved[-1] == ("delete", {"id": customer_id, "name": ada}), moved
    # Before it, at most the snapshot's own changes again (at least once: a
    # transaction open while the snapshot was taken holds its position back).
    assert all(op == "update" for op, _ in moved[:-1]), moved

    say(
        "9. Billing moves Ada to Germany through its own API and invoices her at once: "
        "customers answers with Pubsubpull-Position, billing waits until its mirror has it."
    )
    response = httpx.put(
        f"{subscriber.url}/invoices/{customer_id}/", json={"country": "DE"}, timeout=60
    )
    assert response.status_code == 200, response.text
    invoice = response.json()
    print(f"   customers said Pubsubpull-Position: {invoice['position']}")
    print(f"   billing's invoice, read from its own copy right after: {invoice['country']}")
    assert invoice["country"] == "DE", invoice

    say("done: every step worked.")
