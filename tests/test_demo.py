"""The demo's scripted tour runs end to end: two services, their workers, real HTTP."""

import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.db import connection

from .conftest import dsn

ROOT = Path(__file__).resolve().parent.parent


def run_tour(env: dict, logs: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--tour"],
        env={**env, "DEMO_LOGS": str(logs)},
        capture_output=True,
        text=True,
        timeout=400,
    )
    output = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in logs.glob("*.log"))
    assert result.returncode == 0, result.stdout + result.stderr + output
    return result


@pytest.mark.slow
def test_the_tour_runs_twice_and_stops_everything(db, tmp_path):
    """The README's order, twice over: the second run reuses what the first left."""
    prefix = f"tour_{uuid.uuid4().hex[:8]}"
    server = connection.settings_dict
    url = (
        f"postgres://{quote(server['USER'] or 'postgres')}:{quote(server['PASSWORD'] or '')}"
        f"@{quote(server['HOST'] or '127.0.0.1', safe='')}:{server['PORT'] or 5432}/postgres"
    )
    env = {
        **os.environ,
        "DATABASE_URL": os.environ.get("DATABASE_URL", url),
        "DEMO_DB_PREFIX": prefix,
    }
    try:
        for run in ("first", "second"):
            result = run_tour(env, tmp_path / run)
            assert "tour: done: every step worked." in result.stdout
            assert "admin via POST /admin/customers/customer/add/" in result.stdout
            # Read your writes: the invoice billing reads right after the move shows it.
            assert "read from its own copy right after: DE" in result.stdout
            assert "demo: stopping" not in result.stderr
            # Everything it started has stopped: nothing answers on its ports any more.
            ports = [int(p) for p in re.findall(r"serves http://127\.0\.0\.1:(\d+)", result.stdout)]
            assert len(ports) == 2, result.stdout
            for port in ports:
                with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), 1):
                    pass
        assert "reusing billing's token and subscription" in result.stdout
        assert "billing-users at customers: {'states': ['active'], 'refused': 0}" in result.stdout
    finally:
        with psycopg.connect(dsn(), autocommit=True) as conn:
            for suffix in ("publisher", "publisher_other", "subscriber"):
                conn.execute(f'DROP DATABASE IF EXISTS "{prefix}_{suffix}" WITH (FORCE)')
