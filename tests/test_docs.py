"""The documentation names only things that exist, and its curl examples work."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from django.core.management import get_commands
from django.urls import Resolver404, resolve

from customers.models import Customer
from pubsubpull import conf
from pubsubpull.api.auth import create_token

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
