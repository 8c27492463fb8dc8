"""The benchmarks run: a smoke test of their --quick mode, not a measurement."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_write_overhead_quick():
    # Its own database, so parallel runs on one server do not collide.
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/write_overhead.py",
            "--quick",
            "--db-name",
            f"{os.environ.get('PUBLISHER_DB_NAME', 'bench')}_smoke_{os.getpid()}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Capture version 3 as migrations install it, and version 4 beside it.
    for variant in ("pubsubpull", "pubsubpull v4"):
        ratios = re.search(rf"^  {variant} +(insert 1 .*)$", result.stdout, re.MULTILINE)
        assert ratios, result.stdout
        for measure in ("insert 1", "update 1", "INSERT", "UPDATE", "DELETE"):
            assert re.search(rf"{measure} \d+\.\d%", ratios.group(1)), result.stdout


@pytest.mark.slow
def test_longpoll_quick():
    """100 polls, 2 rounds, under uvicorn (answering directly and through Django; and
    gunicorn with the bench extra): no errors, a few connections. Timings are not
    asserted: this is not a measurement."""
    import importlib.util

    servers = ["asgi", "asgi-django"] + (["wsgi"] if importlib.util.find_spec("gunicorn") else [])
    name = f"{os.environ.get('PUBLISHER_DB_NAME', 'bench')}_longpoll_{os.getpid()}"
    result = subprocess.run(
        [sys.executable, "benchmarks/longpoll.py", "--quick", "--servers", *servers],
        cwd=ROOT,
        env={**os.environ, "PUBLISHER_DB_NAME": name},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    labels = ["ASGI direct (uvicorn)", "ASGI via Django"]
    for label in labels + (["WSGI (gunicorn gthread)"] if "wsgi" in servers else []):
        line = re.search(rf"^{re.escape(label)} +(.*)$", result.stdout, re.MULTILINE)
        assert line, result.stdout
        _, _, _, errors, connections, *_ = line.group(1).split()
        assert errors == "0" and int(connections) <= 5, result.stdout


@pytest.mark.slow
def test_filters_quick():
    """A short backlog: both subscriptions delivered, the ratio printed (not asserted)."""
    name = f"{os.environ.get('PUBLISHER_DB_NAME', 'bench')}_filters_{os.getpid()}"
    result = subprocess.run(
        [sys.executable, "benchmarks/filters.py", "--changes", "3000"],
        cwd=ROOT,
        env={**os.environ, "PUBLISHER_DB_NAME": name},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"ratio \d+\.\dx", result.stdout), result.stdout
    assert "pubsubpull_change_feed" in result.stdout, result.stdout
