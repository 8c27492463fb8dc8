"""The documentation names only things that exist, and its curl examples work."""

from __future__ import annotations

import importlib
import inspect
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from django.core.management import get_commands
from django.db import connection
from django.test import RequestFactory
from django.urls import Resolver404, resolve
from django.utils import timezone

import pubsubpull
from customers.models import Customer
from pubsubpull import conf
from pubsubpull.publisher.api.auth import create_token
from pubsubpull.publisher.delivery.models import Subscription

ROOT = Path(__file__).resolve().parent.parent
DOCS = [*sorted((ROOT / "docs").glob("*.rst")), ROOT / "README.rst"]


def text() -> str:
    return "\n".join(path.read_text() for path in DOCS)


def test_every_management_command_named_exists_and_each_is_documented():
    docs = text()
    commands = {name for name in get_commands() if name.startswith("pubsubpull_")}
    invoked = set(re.findall(r"manage\.py\s+(pubsubpull_[a-z_]+)", docs))
    assert invoked, "the docs show no command"
    assert invoked <= commands, f"named but missing: {sorted(invoked - commands)}"
    undocumented = {c for c in commands if c not in docs}
    assert not undocumented, f"commands without documentation: {sorted(undocumented)}"


def test_every_setting_is_documented_and_every_documented_setting_exists():
    reference = (ROOT / "docs" / "settings.rst").read_text()
    documented = set(re.findall(r"^``([A-Z_]+)``$", reference, re.M))
    assert documented == set(conf.DEFAULTS), (
        "docs/settings.rst is out of date: run python scripts/settings_doc.py"
    )
    named = set(re.findall(r"PUBSUBPULL\[[\"']([A-Z_]+)[\"']\]", text()))
    for block in re.findall(r"PUBSUBPULL = \{(.*?)\}", text(), re.S):
        named |= set(re.findall(r"[\"']([A-Z_]+)[\"']\s*:", block))
    assert named, "the docs show no setting"
    assert named <= set(conf.DEFAULTS), (
        f"unknown settings in the docs: {named - set(conf.DEFAULTS)}"
    )


def test_every_endpoint_named_resolves():
    paths = set(re.findall(r"\{prefix\}(/[^\s`]*)", text()))
    assert paths
    for path in sorted(paths):
        concrete = (
            path.replace("<app_label>.<model>", "customers.customer")
            .replace("<pk>", "1")
            .replace("<name>", "billing")
        )
        try:
            resolve("/pubsubpull" + concrete)
        except Resolver404:
            pytest.fail(f"the docs name {{prefix}}{path}, which no URL serves")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.django_db(transaction=True)
def test_the_curl_examples_of_the_http_api_work(live_server):
    Customer.objects.create(name="Ada", email="ada@example.com")
    Customer.objects.create(name="Grace", email="grace@example.com")
    _, token = create_token("docs", ["customers.customer"])
    page = subprocess.run(
        [
            "curl",
            "-s",
            "-H",
            f"Authorization: Bearer {token}",
            f"{live_server.url}/pubsubpull/models/customers.customer/instances/?limit=1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    cursor = re.search(r'"feed_position":\s*"([^"]+)"', page.stdout)
    assert cursor, page.stdout
    env = {
        "API": f"{live_server.url}/pubsubpull",
        "AUTH": f"Authorization: Bearer {token}",
        "CURSOR": "",  # from the start: the two inserts are waiting, no long poll
    }
    source = (ROOT / "docs" / "http-api.rst").read_text()
    examples = [line.strip() for line in source.splitlines() if line.strip().startswith("curl ")]
    assert len(examples) >= 7
    for example in examples:
        command = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], example)
        args = shlex.split(command)
        pk = str(Customer.objects.order_by("pk").first().pk)
        args = [a.replace("/instances/1/", f"/instances/{pk}/") for a in args]
        result = subprocess.run(
            [*args[:1], "-s", "-o", "/dev/null", "-w", "%{http_code}", *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (example, result.stderr)
        assert result.stdout in ("200", "201", "204", "304"), (example, result.stdout)


# -- Sections of the docs ---------------------------------------------------------


def sections(name: str) -> dict[str, str]:
    """Each section of a docs page by its title, with the text of its subsections."""
    lines = (ROOT / name).read_text().splitlines()
    headings = []  # (line index of the title, level)
    styles: list[tuple[str, bool]] = []
    for i in range(1, len(lines)):
        underline, title = lines[i], lines[i - 1]
        if (
            len(set(underline)) == 1
            and underline[0] in "=-~^*+#"
            and len(underline) >= len(title.strip()) > 0
            and len(set(title.strip())) > 1
        ):
            style = (underline[0], i >= 2 and lines[i - 2] == underline)
            if style not in styles:
                styles.append(style)
            headings.append((i - 1, styles.index(style)))
    found = {}
    for n, (start, level) in enumerate(headings):
        end = next((s for s, lv in headings[n + 1 :] if lv <= level), len(lines))
        found[lines[start].strip()] = "\n".join(lines[start:end])
    return found


def section(name: str, title: str) -> str:
    found = sections(name)
    assert title in found, f"{name} has no section {title!r}; it has {sorted(found)}"
    return found[title]


def mentions(text: str, key: str) -> bool:
    """``key`` is named in the text as an inline literal or a JSON key."""
    return re.search(rf'(``|"){re.escape(key)}(``|")', text) is not None


# Values keyed by the publisher's columns, model labels or request fields:
# data, not keys of the API.
DATA_KEYS = {"fields", "old", "new", "snapshot"}


def keys_of(value, found: set[str] | None = None) -> set[str]:
    found = set() if found is None else found
    if isinstance(value, dict):
        for key, item in value.items():
            found.add(key)
            if key not in DATA_KEYS:
                keys_of(item, found)
    elif isinstance(value, list):
        for item in value:
            keys_of(item, found)
    return found


# -- Every key of every JSON response is documented ---------------------------------


@pytest.mark.django_db(transaction=True)
def test_every_key_of_every_json_response_is_documented(settings):
    """Keys are gathered from real responses, so a key added to a response
    without a word in its section of the docs fails here."""
    from django.test import Client

    from pubsubpull.publisher import feed
    from tests.delivery_helpers import drain_settled, use_fast_settings
    from tests.receivers import Answer, Receiver

    use_fast_settings(settings)
    Customer.objects.create(name="Ada", email="ada@example.com")
    Customer.objects.create(name="Grace", email="grace@example.com")
    customer = Customer.objects.order_by("pk").first()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE customers_customer")
    _, token = create_token("docs", ["*"])
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    api = "/pubsubpull"

    bodies: dict[tuple[str, str], list] = {}
    errors: list[dict] = []

    def answer(section_key, response, *statuses):
        assert response.status_code in statuses, (response.status_code, response.content)
        body = json.loads(response.content)
        bodies.setdefault(section_key, []).append(body)
        if response.status_code >= 400 and "error" in body:
            errors.append(body)
        return body

    http_api = "docs/http-api.rst"
    answer((http_api, "Service document: ``GET {prefix}/``"), client.get(f"{api}/"), 200)
    snapshot = (http_api, "Snapshot: ``GET {prefix}/models/<app_label>.<model>/instances/``")
    instances = f"{api}/models/customers.customer/instances/"
    first = answer(snapshot, client.get(instances, {"limit": 1, "parts": 2}), 200)
    answer(snapshot, client.get(first["next"]), 200)
    answer(
        (http_api, "One instance: ``GET {prefix}/models/<app_label>.<model>/instances/<pk>/``"),
        client.get(f"{instances}{customer.pk}/"),
        200,
    )
    Customer.objects.filter(pk=customer.pk).update(name="Ada L.")
    answer((http_api, "Change feed: ``GET {prefix}/changes/``"), client.get(f"{api}/changes/"), 200)

    fault = (http_api, "Errors")
    answer(fault, client.get(f"{api}/changes/", {"limit": "ten"}), 400)
    answer(fault, client.get(f"{api}/changes/", {"after": "nonsense"}), 400)
    answer(fault, client.get(f"{api}/changes/", {"models": "shop.nothing"}), 400)
    answer(fault, client.get(f"{api}/changes/", {"wait": "-1"}), 400)
    answer(fault, client.get(f"{instances}?after=nonsense"), 400)
    answer(fault, client.get(f"{instances}?parts=99"), 400)
    answer(fault, Client().get(f"{api}/changes/"), 401)
    answer(fault, client.get(f"{api}/models/shop.nothing/instances/"), 404)
    answer(fault, client.get(f"{instances}999999/"), 404)
    answer(fault, client.post(f"{api}/changes/"), 405)
    answer(fault, client.get(f"{api}/subscriptions/nobody/"), 404)
    answer(fault, client.get(f"{api}/subscriptions/-bad-/"), 400)
    answer(fault, client.put(f"{api}/subscriptions/x/", "{", "application/json"), 400)
    answer(
        fault,
        client.put(f"{api}/subscriptions/x/", b"[" * (1024 * 1024 + 1), "application/json"),
        413,
    )
    answer(
        fault,
        client.put(
            f"{api}/subscriptions/x/",
            {"callback": "http://127.0.0.1:9/", "models": ["shop.invoice"]},
            "application/json",
        ),
        400,
    )
    narrow = Client(HTTP_AUTHORIZATION=f"Bearer {create_token('narrow', ['customers.country'])[1]}")
    answer(fault, narrow.get(instances), 403)
    with connection.cursor() as cursor:  # prune the oldest change: older cursors are gone
        cursor.execute(
            "DELETE FROM pubsubpull_change WHERE id = (SELECT min(id) FROM pubsubpull_change)"
        )
    answer(fault, client.get(f"{api}/changes/", {"after": feed.START.encode()}), 410)

    subscribing = ("docs/subscriptions.rst", "Subscribing")
    with Receiver(lambda received, n: Answer(503 if n == 0 else 200)) as receiver:
        url = f"{api}/subscriptions/billing/"
        body = {"callback": receiver.url(), "models": ["customers.customer"], "start": "beginning"}
        answer(subscribing, client.put(url, body, "application/json"), 201)
        answer(subscribing, client.put(url, {"rotate_secret": True}, "application/json"), 200)
        subscription_id = Subscription.objects.get(name="billing").pk
        assert drain_settled(subscription_id) == "failed"  # the receiver answered 503
        answer(subscribing, client.get(url), 200)
        answer(subscribing, client.get(f"{api}/subscriptions/"), 200)
        Subscription.objects.filter(pk=subscription_id).update(next_attempt_at=timezone.now())
        drain_settled(subscription_id)
        answer(subscribing, client.get(url), 200)
        notification = ("docs/subscriptions.rst", "Notifications")
        bodies[notification] = [r.json for r in receiver.requests]
        assert bodies[notification]

    health = ("docs/operations.rst", "Looking at it")
    answer(health, client.get(f"{api}/health/"), 200, 503)

    receive = ("docs/pull-and-receive.rst", "Receive")
    view = pubsubpull.receiver("tests.client_handlers.record")
    factory = RequestFactory()
    for request in [
        factory.put("/hook/", b"not json", content_type="application/json"),
        factory.put("/hook/", {"data": {"subscription": "nobody"}}, "application/json"),
        factory.get("/hook/"),
    ]:
        response = view(request)
        assert response.status_code >= 400
        answer(receive, response, response.status_code)

    missing = []
    for (page, title), responses in bodies.items():
        text = section(page, title)
        for key in sorted(set().union(*(keys_of(b) for b in responses))):
            if not mentions(text, key):
                missing.append(f'{page}, "{title}": {key}')
    assert not missing, "response keys the docs do not mention:\n" + "\n".join(missing)

    # And each error's status and code is a row of its table.
    for error in errors:
        page, title = receive if error in bodies[receive] else fault
        row = rf"^{error['status']}\s+``{error['error']}``"
        assert re.search(row, section(page, title), re.M), (
            f'{page}, "{title}": no row for {error["status"]} {error["error"]}'
        )


def test_every_error_code_the_code_can_answer_is_in_a_table_of_the_docs():
    """Also codes no test above provokes: each (status, code) in the source."""
    answer = re.compile(r'(?:ApiError|error_response|_error)\(\s*(\d{3}),\s*"([a-z_]+)"')
    tables = {
        "api": section("docs/http-api.rst", "Errors"),
        "client": section("docs/pull-and-receive.rst", "Receive"),
    }
    for path in sorted((ROOT / "pubsubpull").rglob("*.py")):
        side = "client" if "client" in path.relative_to(ROOT).parts else "api"
        for status, code in answer.findall(path.read_text()):
            row = rf"^{status}\s+``{code}``"
            assert re.search(row, tables[side], re.M), (
                f"{path.relative_to(ROOT)} answers {status} {code}; its table of errors "
                "in the docs does not list it"
            )


# -- The Python API as documented ----------------------------------------------------


def test_every_public_name_is_documented_with_its_import_path():
    docs = text()
    missing = [n for n in pubsubpull.__all__ if not re.search(rf"pubsubpull\.{n}\b", docs)]
    assert not missing, f"pubsubpull names the docs never show as pubsubpull.<name>: {missing}"


def _resolves(path: str, obj) -> bool:
    module, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute, None) is obj
    except ImportError:
        return False


def test_every_class_the_docs_name_is_given_with_its_import_path():
    """A class named as ``PullCursor`` somewhere is shown once where it is imported from
    (``pubsubpull.client.models.PullCursor``, or ``from … import PullCursor``)."""
    docs = text()
    classes = {}
    for path in sorted((ROOT / "pubsubpull").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        for name in re.findall(r"^class ([A-Z]\w+)", path.read_text(), re.M):
            classes.setdefault(name, []).append(module)
    named = set(re.findall(r"``([A-Z][A-Za-z]+)``", docs)) & set(classes)
    assert named, "the docs name no class of pubsubpull"
    unplaced = []
    for name in sorted(named):
        obj = getattr(importlib.import_module(classes[name][0]), name)
        dotted = re.findall(rf"\b((?:[a-z_]+\.)+){name}\b", docs)
        # One way to split a dotted path only: "(?:[a-z_]+\.?)+" backtracks
        # exponentially over a long one that does not match.
        imported = re.findall(rf"from ((?:[a-z_]+\.)*[a-z_]+) import [^\n]*\b{name}\b", docs)
        paths = [d + name for d in dotted] + [f"{m}.{name}" for m in imported]
        if not any(_resolves(p, obj) for p in paths):
            unplaced.append(f"{name} (from {classes[name][0]})")
    assert not unplaced, f"classes named without an import path that works: {unplaced}"


def _signature(func) -> str:
    signature = inspect.signature(func)
    parameters = [
        p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()
    ]
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))


@pytest.mark.parametrize(
    "name", ["pull", "pull_up", "pull_down", "mirror", "subscribe", "unsubscribe", "receiver"]
)
def test_documented_signatures_are_the_real_ones(name):
    real = _signature(getattr(pubsubpull, name))
    documented = [
        re.sub(r"\s+", " ", args).replace('"', "'").replace("( ", "(")
        for args in re.findall(rf"``(?:pubsubpull\.)?{name}(\([^`]+\))``", text())
    ]
    assert documented, f"the docs never give pubsubpull.{name}{real}"
    for args in documented:
        assert args == real, f"the docs give {name}{args}; it is {name}{real}"


def test_every_setting_has_a_description_of_its_own():
    reference = (ROOT / "docs" / "settings.rst").read_text()
    entries = re.split(r"^``([A-Z_]+)``$", reference, flags=re.M)[1:]
    descriptions = dict(zip(entries[::2], entries[1::2], strict=True))
    bare = [
        key
        for key, body in descriptions.items()
        if not re.sub(r"Default: ``.*?``\.", "", body, flags=re.S).strip()
    ]
    assert not bare, (
        f"settings without a description of their own: {bare}. Give each key its own "
        "comment in pubsubpull/conf.py and run python scripts/settings_doc.py"
    )


@pytest.mark.django_db(transaction=True)
def test_the_statuses_the_subscription_docs_give_are_what_a_bad_put_gets():
    """docs/subscriptions.rst: a body over 1 MiB is a 413, a body that is not JSON and a
    model that is not published are 400s with those codes, and none changes anything."""
    from django.test import Client

    _, token = create_token("docs", ["*"])
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    url = "/pubsubpull/subscriptions/billing/"
    good = {"callback": "http://127.0.0.1:9/hooks/", "models": ["customers.customer"]}

    padded = json.dumps({**good, "pad": " " * (1024 * 1024)})
    answer = client.put(url, padded, "application/json")
    assert (answer.status_code, answer.json()["error"]) == (413, "body_too_large")

    answer = client.put(url, "{not json", "application/json")
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_json")

    answer = client.put(url, {**good, "models": ["shop.invoice"]}, "application/json")
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_subscription")
    assert answer.json()["fields"] == {"models": "not published models: shop.invoice"}

    assert not Subscription.objects.exists()
    docs = section("docs/subscriptions.rst", "Subscribing")
    for status, code in (
        (413, "body_too_large"),
        (400, "invalid_json"),
        (400, "invalid_subscription"),
    ):
        assert re.search(rf"``{status}``[^.]*?\(``{code}``\)", re.sub(r"\s+", " ", docs)), code
    assert "not published models: shop.invoice" in re.sub(r"\s+", " ", docs)


def test_the_documented_retry_schedule_is_the_one_backoff_computes(settings):
    """docs/subscriptions.rst's table of waits holds for every draw of the jitter."""
    from pubsubpull.publisher.delivery.deliver import backoff

    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "RETRY_BASE": 2.0, "RETRY_MAX": 3600.0}
    table = section("docs/subscriptions.rst", "Answering")
    units = {"s": 1, "min": 60}
    rows = re.findall(
        r"^\s+(\d+)(?:st|nd|rd|th)( and later)?\s+(\d+)\u2013(\d+) (s|min)$", table, re.M
    )
    assert len(rows) >= 4, "the retry table is gone from docs/subscriptions.rst"
    for n, later, low, high, unit in rows:
        for failures in range(int(n), int(n) + (5 if later else 1)):
            waits = [backoff(failures) for _ in range(200)]
            low_s, high_s = int(low) * units[unit], int(high) * units[unit]
            assert all(low_s <= w <= high_s for w in waits), (failures, min(waits), max(waits))
            assert min(waits) < low_s * 1.2 and max(waits) > high_s * 0.8, failures


@pytest.mark.parametrize(
    ("field", "page", "title"),
    [
        ("pubsubpull.Change.op", "docs/http-api.rst", "Change feed: ``GET {prefix}/changes/``"),
        ("pubsubpull.Subscription.state", "docs/subscriptions.rst", "What GET shows"),
        ("pubsubpull.PullCursor.state", "docs/pull-and-receive.rst", "Pull"),
        ("pubsubpull.PullCursor.phase", "docs/pull-and-receive.rst", "Pull"),
    ],
)
def test_every_value_of_a_state_or_kind_is_documented(field, page, title):
    """Read from the model's choices, so a new state (say ``blocked``) needs its words."""
    from django.apps import apps

    app_label, model, name = field.split(".")
    choices = apps.get_model(app_label, model)._meta.get_field(name).choices
    text = section(page, title)
    missing = [value for value, _ in choices if not mentions(text, value)]
    assert not missing, f'{page}, "{title}" does not name these values of {field}: {missing}'


def test_every_enum_value_of_the_openapi_document_is_documented():
    from pubsubpull.publisher.api import openapi

    def enums(node):
        if isinstance(node, dict):
            if isinstance(node.get("enum"), list):
                yield from node["enum"]
            for value in node.values():
                yield from enums(value)
        elif isinstance(node, list):
            for value in node:
                yield from enums(value)

    document = openapi.document(["customers.customer"], "http://testserver/pubsubpull")
    docs = "\n".join(
        (ROOT / "docs" / name).read_text() for name in ("http-api.rst", "subscriptions.rst")
    )
    missing = sorted({v for v in enums(document) if not mentions(docs, str(v))})
    assert not missing, f"values the OpenAPI document allows that the docs never name: {missing}"


RST_PAGES = [
    ROOT / "README.rst",
    ROOT / "CHANGELOG.rst",
    ROOT / "benchmarks" / "README.rst",
    *sorted((ROOT / "docs").glob("*.rst")),
]


@pytest.mark.parametrize("page", RST_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_page_renders_without_a_warning(page):
    """As GitHub and PyPI render reStructuredText: plain docutils, no Sphinx roles.

    A malformed table, a Sphinx-only role (``:doc:``) or a merge's leftover
    ``=======`` shows on GitHub as an error box in the page.
    """
    import io

    from docutils.core import publish_doctree

    warnings = io.StringIO()
    publish_doctree(
        page.read_text(),
        source_path=str(page),
        settings_overrides={
            "report_level": 2,
            "halt_level": 5,
            "warning_stream": warnings,
            "syntax_highlight": "none",
        },
    )
    assert warnings.getvalue() == ""


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.django_db(transaction=True)
def test_the_read_your_writes_examples_work(live_server):
    """docs/read-your-writes.rst: its curl gets the header it shows, and the view it
    shows is billing's, which tests/test_read_your_writes.py runs end to end."""
    import textwrap

    from pubsubpull.models import Change
    from pubsubpull.protocol.cursor import Position

    source = (ROOT / "docs" / "read-your-writes.rst").read_text()
    [example] = [line.strip() for line in source.splitlines() if line.strip().startswith("curl ")]
    customer = Customer.objects.create(name="Ada")
    command = example.replace("$SITE", live_server.url)
    command = command.replace("/customers/1/", f"/customers/{customer.pk}/")
    result = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    shown = re.search(r"^ *Pubsubpull-Position: (\S+)$", source, re.M)
    got = re.search(r"^Pubsubpull-Position: (\S+)\r?$", result.stdout, re.M | re.I)
    assert shown and got, result.stdout
    change = Change.objects.filter(op="update").get()
    assert Position.decode(got.group(1)) == Position(change.txid, change.id)
    Position.decode(shown.group(1))  # the docs show a real cursor

    start = source.index("    @csrf_exempt\n")
    block = []
    for line in source[start:].splitlines():
        if line and not line.startswith("    "):
            break
        block.append(line)
    view = textwrap.dedent("\n".join(block)).strip()
    billing = (ROOT / "test-projects" / "subscriber" / "billing" / "views.py").read_text()
    assert view in billing
