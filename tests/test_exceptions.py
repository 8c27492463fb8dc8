"""One exceptions module: a caller catches pubsubpull's errors with one base class."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied

from pubsubpull import exceptions
from pubsubpull.exceptions import PubsubpullError

ROOT = Path(__file__).resolve().parent.parent

DEFINED = [
    obj
    for obj in vars(exceptions).values()
    if inspect.isclass(obj)
    and issubclass(obj, BaseException)
    and obj.__module__ == exceptions.__name__
]


def test_every_exception_of_pubsubpull_has_the_one_base():
    assert len(DEFINED) > 15
    assert [e.__name__ for e in DEFINED if not issubclass(e, PubsubpullError)] == []


def test_the_exceptions_module_imports_nothing_of_pubsubpull():
    """Every side, the protocol included, imports it without importing another side."""
    tree = ast.parse(Path(exceptions.__file__).read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert [name for name in imported if (name or "").split(".")[0] != "__future__"] == ["typing"]


def test_no_other_module_defines_an_exception():
    defined = []
    for path in sorted((ROOT / "pubsubpull").rglob("*.py")):
        if path.name == "exceptions.py":
            continue
        for name in re.findall(
            r"^class (\w+)\((?:[\w.]*(?:Exception|Error))", path.read_text(), re.M
        ):
            defined.append(f"{path.relative_to(ROOT)}: {name}")
    assert defined == []


@pytest.mark.parametrize(
    ("path", "name"),
    [
        # The import paths the docs show keep working.
        ("pubsubpull.client.source", "SourceError"),
        ("pubsubpull.client.source", "Gone"),
        ("pubsubpull.models", "ChangeLogIsReadOnly"),
        ("pubsubpull.publisher.feed", "InvalidCursor"),
        ("pubsubpull.publisher.feed", "SeveralDatabases"),
        ("pubsubpull.publisher.feed", "CursorExpired"),
        ("pubsubpull.protocol.jsonbody", "InvalidJSON"),
        ("pubsubpull.protocol.cursor", "InvalidCursor"),
        ("pubsubpull.protocol.notification", "InvalidNotification"),
        ("pubsubpull.publisher.delivery.subscriptions", "InvalidSubscription"),
        ("pubsubpull.publisher.delivery.guard", "CallbackRefused"),
    ],
)
def test_a_documented_import_path_is_the_same_class(path, name):
    assert getattr(importlib.import_module(path), name) is getattr(exceptions, name)


def test_the_builtin_bases_are_kept_so_existing_handlers_still_catch():
    assert issubclass(exceptions.InvalidCursor, ValueError)
    assert issubclass(exceptions.SeveralDatabases, ValueError)
    assert issubclass(exceptions.InvalidJSON, ValueError)
    assert issubclass(exceptions.InvalidSubscription, ValueError)
    assert issubclass(exceptions.CallbackRefused, ValueError)
    assert issubclass(exceptions.NotAllowed, PermissionError)
    assert issubclass(exceptions.Gone, exceptions.SourceError)


def test_nothing_is_named_like_djangos_permission_denied():
    """The API's 403 is AccessDenied; PermissionDenied means Django's, everywhere."""
    assert not hasattr(exceptions, "PermissionDenied")
    assert not issubclass(exceptions.AccessDenied, PermissionDenied)
    for path in sorted((ROOT / "pubsubpull").rglob("*.py")):
        for line in path.read_text().splitlines():
            assert not re.match(r"\s*class PermissionDenied\b", line), path


def test_the_messages_say_what_to_do():
    expired = exceptions.CursorExpired(cursor=None, horizon=None)
    assert "Take a new snapshot" in str(expired)
    several = exceptions.SeveralDatabases([["a.x"], ["b.y"]])
    assert "models=a.x and models=b.y" in str(several)
    source = exceptions.SourceError("down", status=503, retry_after=5.0)
    assert (str(source), source.status, source.retry_after) == ("down", 503, 5.0)
