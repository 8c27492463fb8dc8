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
Keys described together share one comment in ``pubsubpull/conf.py``.
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
