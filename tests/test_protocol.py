"""The wire protocol is one contract: cursors order as the feed does, items are what the
OpenAPI document says, and a notification reads back as it was written."""

from __future__ import annotations

import ast
import itertools
import json
import sys
from pathlib import Path

import jsonschema
import pytest
from django.db import connection
from django.test import Client

from customers.models import Country, Customer
from pubsubpull.protocol import cursor, items, jsonbody, notification
from pubsubpull.protocol.cursor import Position
from pubsubpull.protocol.events import Event
from pubsubpull.publisher import feed
from pubsubpull.publisher.api import openapi
from pubsubpull.publisher.api.auth import create_token

# -- Cursors ------------------------------------------------------------------


def test_cursors_order_as_the_feed_does_not_as_their_strings():
    places = [(0, 0), (1, 5), (9, 2**62), (10, 1), (10, 2), (2**63 - 1, 2**63 - 1)]
    spelled = [Position(*p).encode() for p in places]
    # The strings do not sort in feed order (c1.9... after c1.10... in base64 too)...
    assert sorted(spelled) != spelled
    # ...their positions do, and decode gives them back exactly.
    assert [cursor.parse(s) for s in spelled] == sorted(Position(*p) for p in places)
    for earlier, later in itertools.pairwise(spelled):
        assert cursor.is_new(later, earlier) and not cursor.is_new(earlier, later)
        assert cursor.advances(later, earlier) and not cursor.advances(earlier, later)
        assert not cursor.is_new(earlier, earlier) and not cursor.advances(earlier, earlier)


@pytest.mark.parametrize("unknown", [None, "", "garbage", "YzEuMS4y=", 42, ["c1.1.2"]])
def test_an_unreadable_cursor_is_unknown_never_an_error(unknown):
    """A reader keeps a change it cannot place (at least once) and never stores a place
    it cannot read; a comparison with None raises nothing."""
    known = Position(5, 7).encode()
    assert cursor.parse(unknown) is None
    assert cursor.is_new(unknown, known)  # handle it: skipping would lose it
    assert cursor.is_new(known, unknown)  # nothing handled that it knows of
    assert cursor.is_new(unknown, unknown)
    assert not cursor.advances(unknown, known)  # keep the place it has
    assert cursor.advances(known, unknown)
    assert not cursor.advances(unknown, unknown)


def test_the_feed_hands_out_protocol_cursors():
    assert feed.Position is Position and feed.InvalidCursor is cursor.InvalidCursor
    assert cursor.parse(cursor.END.encode()) == Position(feed.MAX_ID, feed.MAX_ID)
    with pytest.raises(cursor.InvalidCursor):
        Position.decode(Position(2**63, 0).encode())  # out of range


def test_the_protocol_imports_neither_side_of_the_wire():
    """Both sides import it, so it imports only the standard library, itself and
    pubsubpull.exceptions (which imports nothing of pubsubpull: test_exceptions)."""
    package = Path(items.__file__).parent
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                own = name == "pubsubpull.protocol" or name.startswith("pubsubpull.protocol.")
                own = own or name == "pubsubpull.exceptions"
                top = name.split(".")[0]
                assert own or top in sys.stdlib_module_names, f"{module.name} imports {name}"


# -- Items ----------------------------------------------------------------------


ODD = ["ü ✓ 😀", "\u2028\u2029", 'quote " and \\', "", "</script>"]


@pytest.mark.parametrize("text", ODD)
def test_a_change_item_as_text_is_its_dict_as_json(text):
    old = {"name": text, "n": 2**70, "x": 1.5, "nested": [{"a": None}]}
    new = {"name": text + "!", "flag": True}
    args = (7, Position(3, 7).encode(), "shop.item", text, "update", "2026-12-01T10:00:00+00:00")
    request = items.request_item(3, "PATCH", f"/items/{text}")
    as_dict = items.change_item(*args, old, new, request)
    as_text = items.change_item_json(*args, items.dumps(old), items.dumps(new), request)
    assert as_text == json.dumps(as_dict, ensure_ascii=False, separators=(",", ":"))
    assert tuple(as_dict) == items.CHANGE_KEYS and as_dict["sequence"] == 7
    jsonschema.validate(json.loads(as_text), items.change_schema())


@pytest.mark.django_db
def test_the_instance_item_sql_renders_the_keys_in_order_as_json():
    sql = items.instance_item_sql(
        pk="to_json(%(pk)s::text)::text",
        url=(items.Text('"'), "%(url)s", items.Text("'100%\"")),  # merged, quoted, escaped
        sequence="'null'",
        fields="""'{"name": "it''s 100%%"}'""",
    )
    with connection.cursor() as db:
        db.execute(f"SELECT {sql}", {"pk": "a'b", "url": "http://x/a'b/"})
        [(text,)] = db.fetchall()
    item = json.loads(text)
    assert tuple(item) == items.INSTANCE_KEYS
    assert item == {
        "pk": "a'b",
        "url": "http://x/a'b/'100%",
        "sequence": None,
        "fields": {"name": "it's 100%"},
    }
    assert sql.count("||") == 8  # each run of literal text is one SQL literal
    with pytest.raises(TypeError, match="pk, url, sequence, fields"):
        items.instance_item_sql(pk="1", url="'\"\"'")


# -- The OpenAPI document and what is served --------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_openapi_schemas_are_what_the_protocol_builds_and_serves():
    fr = Country.objects.create(code="fr", name="France")
    ada = Customer.objects.create(name="Ada ✓", country=fr)
    Customer.objects.filter(pk=ada.pk).update(email="ada@example.com")
    Customer.objects.filter(pk=ada.pk).delete()
    document = openapi.document(["customers.customer", "customers.country"], "http://t/p")
    schemas = document["components"]["schemas"]

    # The Change schema is the protocol's, key for key, and every served change fits it.
    assert schemas["Change"] == items.change_schema()
    assert tuple(schemas["Change"]["properties"]) == items.CHANGE_KEYS
    assert schemas["Change"]["required"] == list(items.CHANGE_KEYS)
    client = Client(headers={"Authorization": f"Bearer {create_token('t', ['*'])[1]}"})
    page = client.get("/pubsubpull/changes/?models=customers.customer,customers.country")
    served = page.json()["changes"]
    assert {c["op"] for c in served} == {"insert", "update", "delete"}
    for change in served:
        assert tuple(change) == items.CHANGE_KEYS
        jsonschema.validate(change, schemas["Change"])
    # The feed's own reading renders the same items, as dicts and as text.
    changes = feed.read_changes(None, 100, ["customers.customer", "customers.country"]).changes
    assert [c.as_json() for c in changes] == served
    assert [json.loads(c.as_json_text()) for c in changes] == served

    # Each model's instance schema has the protocol's keys, and its items fit it.
    Customer.objects.create(name="Grace", country=fr)
    for label, name in [("customers.customer", "customers_customer"), ("customers.country",) * 2]:
        schema = schemas[name.replace(".", "_")]
        assert schema["required"] == list(items.INSTANCE_KEYS)
        assert tuple(schema["properties"]) == ("model", *items.INSTANCE_KEYS)
        instances = client.get(f"/pubsubpull/models/{label}/instances/").json()["instances"]
        assert instances
        for item in instances:
            assert tuple(item) == items.INSTANCE_KEYS
            jsonschema.validate(item, schema)


# -- Notifications ----------------------------------------------------------------


def test_a_notification_reads_back_as_it_was_written():
    change = items.change_item(
        9, Position(4, 9).encode(), "shop.item", 1, "insert", "2026-12-01T10:00:00+00:00",
        None, {"name": "😀"}, None,
    )  # fmt: skip
    changes_json = "[" + items.dumps(change) + "]"
    cursor_text = Position(4, 2**63 - 1).encode()
    body = notification.body("billing ✓", change["at"], changes_json, cursor_text)
    envelope = jsonbody.loads(body)
    assert envelope["type"] == notification.TYPE and envelope["timestamp"] == change["at"]
    assert notification.subscription_of(envelope) == "billing ✓"
    received = notification.read(envelope)
    assert received == notification.Notification("billing ✓", [change], cursor_text, False)
    assert Event.from_change(received.changes[0]).data == {"name": "😀"}
    # The byte cap's bound holds for every cursor and timestamp a body may carry.
    assert len(body) - len(changes_json) <= notification.overhead("billing ✓", len(change["at"]))

    parked = jsonbody.loads(notification.body("b", "", changes_json, None, parked=True))
    assert notification.read(parked) == notification.Notification("b", [change], None, True)


@pytest.mark.parametrize(
    "envelope",
    [None, [], {"data": []}, {"data": {"changes": {}}}, {"data": {"changes": [{"op": 1}]}}],
)
def test_what_is_no_notification_says_so(envelope):
    with pytest.raises(notification.InvalidNotification, match="not a pubsubpull notification"):
        notification.read(envelope)
    assert notification.subscription_of(envelope) is None
