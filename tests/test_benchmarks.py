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
            f"bench_smoke_{os.getpid()}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ratios = re.search(r"^  pubsubpull +(.*)$", result.stdout, re.MULTILINE)
    assert ratios, result.stdout
    for measure in ("insert 1", "update 1", "INSERT", "UPDATE", "DELETE"):
        assert re.search(rf"{measure} \d+\.\d%", ratios.group(1)), result.stdout
