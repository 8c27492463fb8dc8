"""Write docs/settings.rst from the comments above each key of pubsubpull/conf.py.

Run it after adding a setting: ``python scripts/settings_doc.py``. The test
suite checks that every setting is documented.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HEADER = """========
Settings
========

All settings live in one dict in your settings module; every key is optional::

    PUBSUBPULL = {
        "BATCH_SIZE": 500,
        "CALLBACK_ALLOW": ["10.0.0.0/8", "billing.internal"],
    }

An unknown key is an error (``pubsubpull.E002``), so a typo does not go unnoticed.
Keys described together share one comment in ``pubsubpull/conf.py``, which
states each default once; pubsubpull reads each setting through its typed
function there (``conf.lease()`` for ``LEASE``).

``manage.py check`` (and ``runserver``, ``migrate``, ``pubsubpull_worker``)
checks the values:

- ``pubsubpull.E003``: ``PUBSUBPULL`` is not a dict;
- ``pubsubpull.E004``: a setting of the wrong type (a string for a number, say);
- ``pubsubpull.E005``: a number out of its range (a timeout of 0, no threads);
- ``pubsubpull.E006``: ``LEASE`` not longer than ``CONNECT_TIMEOUT + TIMEOUT``;
- ``pubsubpull.E007``: ``PULL_LEASE`` not longer than ``PULL_WAIT + PULL_TIMEOUT``;
- ``pubsubpull.E008``: ``BATCH_SIZE`` larger than ``MAX_BATCH_SIZE``;
- ``pubsubpull.E009``: ``MIGRATIONS_APP`` is not an installed app's label;
- ``pubsubpull.E010``: ``TASK_BACKEND`` is not an alias of ``TASKS``;
- ``pubsubpull.E011``: ``TASK_QUEUE`` is not one of that backend's ``QUEUES``;
- ``pubsubpull.W002``: that backend is an ``ImmediateBackend`` (Django's default
  when ``TASKS`` is unset), which runs each job inside the call that enqueues
  it: ``pubsubpull.pull()`` pulls inside the call, budget after budget,
  instead of storing the cursor and returning, and ``pubsubpull_worker``
  delivers in its listening thread, one subscription at a time;
- ``pubsubpull.W003``: that backend is a ``DummyBackend``, which never runs a
  job: nothing is delivered and no pull advances.

Silence the two warnings (``SILENCED_SYSTEM_CHECKS``) only on a service that
neither delivers nor pulls.
"""


def settings() -> list[tuple[str, str, str]]:
    source = (ROOT / "pubsubpull" / "conf.py").read_text()
    body = source[source.index("DEFAULTS") :]
    body = body[body.index("{") + 1 : body.index("\n}")]
    found, comment = [], []
    for line in body.splitlines():
        text = line.strip()
        if text.startswith("#"):
            comment.append(text.lstrip("#").strip())
        elif match := re.match(r'"([A-Z_]+)":\s*(.*?),?$', text):
            found.append((match.group(1), match.group(2), " ".join(c for c in comment if c)))
            comment = []
    return found


def wrap(text: str, indent: str = "    ", width: int = 79) -> list[str]:
    lines, line = [], indent
    for word in text.split():
        if len(line) + len(word) + 1 > width and line.strip():
            lines.append(line)
            line = indent
        line += ("" if line == indent else " ") + word
    return [*lines, line] if line.strip() else lines


def main() -> None:
    out = [HEADER]
    for key, default, text in settings():
        out += [f"``{key}``", f"    Default: ``{default}``."]
        if text:
            out += ["", *wrap(text)]
        out.append("")
    (ROOT / "docs" / "settings.rst").write_text("\n".join(out))


if __name__ == "__main__":
    main()
