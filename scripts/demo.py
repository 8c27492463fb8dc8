"""Run the two-service demo: a publisher (customers) and a subscriber (billing).

Started by ./demo.sh, which makes the virtual environment and finds PostgreSQL
(DATABASE_URL, the local cluster, or an embedded server) first. This script
creates and migrates both services' databases, starts each service's web
server and worker on 127.0.0.1, prints what to try, and stops everything it
started on Ctrl-C. ``--tour`` runs a scripted walk-through instead and exits.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.postgres import django_database  # noqa: E402

PROJECTS = ROOT / "test-projects"


# Locks on the preferred ports, held while this demo runs (released at exit).
_PORT_LOCKS: list = []


def free_port(preferred: int) -> int:
    """``preferred`` if no other demo holds it and it is free, else any free port.

    Checking that a port is free and binding it later are two steps: two demos
    starting at once (two test suites, say) both found 8001 free, one's
    runserver then failed to bind, and its tour talked to the other demo's
    server. A lock per preferred port settles which demo has it; the other
    takes a port the kernel hands out.
    """
    path = Path(tempfile.gettempdir()) / f"pubsubpull-demo-port-{preferred}.lock"
    lock = open(path, "w")  # noqa: SIM115 (held open while the demo runs)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
    else:
        _PORT_LOCKS.append(lock)
    for port in (0,) if lock.closed else (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


class Service:
    """One Django project of test-projects/, on its own database."""

    def __init__(self, name: str, database: str, port: int, url: str):
        self.name = name
        self.dir = PROJECTS / name
        self.database = database
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "DATABASE_URL": url,
            f"{name.upper()}_DB_NAME": database,
            "DJANGO_SETTINGS_MODULE": f"{name}.settings",
            "PYTHONUNBUFFERED": "1",
        }

    def manage(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        if args[0] == "shell":
            args = ("shell", "-v0", *args[1:])  # no list of auto-imports
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.dir,
            env={**self.env, **kwargs.pop("env", {})},
            check=check,
            **kwargs,
        )

    def start(self, *args: str, log: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=self.dir,
            env=self.env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop each group
        )


def ensure_database(url: str, name: str) -> None:
    settings = django_database(url)
    params = {k.lower(): v for k, v in settings.items() if k in ("HOST", "PORT", "USER") and v}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def wait_http(url: str, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    """Wait until ``process`` (a web server) answers at ``url``."""
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:  # it could not bind its port, say
            raise RuntimeError(f"{url}: the server exited with {process.returncode}; see {log}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {seconds:.0f} s") from None
            time.sleep(0.3)


class Demo:
    def __init__(self, database_url: str, logs: Path):
        self.database_url = database_url
        self.logs = logs
        self.processes: list[tuple[str, subprocess.Popen]] = []
        prefix = os.environ.get("DEMO_DB_PREFIX", "demo")
        self.publisher = Service("publisher", f"{prefix}_publisher", free_port(8001), database_url)
        self.subscriber = Service(
            "subscriber", f"{prefix}_subscriber", free_port(8002), database_url
        )

    def prepare(self) -> None:
        self.logs.mkdir(exist_ok=True)
        for service in (self.publisher, self.subscriber):
            ensure_database(self.database_url, service.database)
            print(f"demo: migrating the {service.name} ({service.database})")
            service.manage("migrate", "--no-input", "-v0")
            service.manage(
                "shell",
                "-c",
                "from django.contrib.auth.models import User\n"
                "if not User.objects.filter(username='admin').exists():\n"
                "    User.objects.create_superuser('admin', 'admin@example.com', 'admin')",
            )
        # The publisher keeps its loyalty ledger in a second database.
        ensure_database(self.database_url, f"{self.publisher.database}_other")
        self.publisher.manage("migrate", "--database", "other", "--no-input", "-v0")
        token = self.billing_token()
        self.subscriber.env["CUSTOMERS_URL"] = self.publisher.url + "/pubsubpull/"
        self.subscriber.env["CUSTOMERS_TOKEN"] = token

    def billing_token(self) -> str:
        """Billing's token at customers: the one an earlier run left, if still good.

        Only its hash is kept at customers, so billing's own copy (in its
        subscription and its mirror's cursor) is what can be reused. Reusing it
        keeps the earlier run's subscription (same owner, same name) instead of
        adding a second one that calls the same receiver with another secret.
        When there is none, or customers no longer knows it, the old token and
        the subscriptions it made are removed on both sides and a new one made.
        """
        held = self.subscriber.manage(
            "shell",
            "-c",
            "from pubsubpull.client.models import PullCursor, RemoteSubscription\n"
            "tokens = [*RemoteSubscription.objects.filter(name='billing-users')"
            ".values_list('token', flat=True),\n"
            "    *PullCursor.objects.filter(name='mirror:billing.customercountry')"
            ".values_list('token', flat=True)]\n"
            "print(next((t for t in tokens if t), ''))",
            capture_output=True,
            text=True,
        ).stdout.strip()
        # A subscription whose token is gone (left by a demo before this one
        # reused tokens) would call billing for ever with a secret it lost.
        self.publisher.manage(
            "shell",
            "-c",
            "from pubsubpull.publisher.delivery.models import Subscription\n"
            "from pubsubpull.models import ServiceToken\n"
            "owners = [f'token:{pk}' for pk in ServiceToken.objects.values_list('pk', flat=True)]\n"
            "Subscription.objects.filter(name='billing-users', owner__startswith='token:')"
            ".exclude(owner__in=owners).delete()",
        )
        if held:
            valid = self.publisher.manage(
                "shell",
                "-c",
                "import os\n"
                "from pubsubpull.publisher.api.auth import hash_token\n"
                "from pubsubpull.models import ServiceToken\n"
                "print(ServiceToken.objects.filter(name='billing', is_active=True,\n"
                "    key_hash=hash_token(os.environ['DEMO_TOKEN'])).exists())",
                capture_output=True,
                text=True,
                env={"DEMO_TOKEN": held},
            ).stdout.strip()
            if valid == "True":
                print("demo: reusing billing's token and subscription from an earlier run")
                return held
        # Replace: what the old token made goes with it, at customers and at billing.
        self.publisher.manage(
            "shell",
            "-c",
            "from pubsubpull.publisher.delivery.models import Subscription\n"
            "from pubsubpull.models import ServiceToken\n"
            "old = ServiceToken.objects.filter(name='billing')\n"
            "Subscription.objects.filter(owner__in=[f'token:{t.pk}' for t in old]).delete()\n"
            "old.delete()",
        )
        self.subscriber.manage(
            "shell",
            "-c",
            "from pubsubpull.client.models import RemoteSubscription\n"
            "RemoteSubscription.objects.filter(name='billing-users').delete()",
        )
        created = self.publisher.manage(
            "pubsubpull_token", "create", "billing", "--models", "customers.customer",
            "auth.user", capture_output=True, text=True,
        )  # fmt: skip
        return created.stdout.strip().splitlines()[-1]

    def start(self) -> None:
        web = []
        for service in (self.publisher, self.subscriber):
            for role, args in (
                ("web", ["runserver", f"127.0.0.1:{service.port}", "--noreload"]),
                ("worker", ["pubsubpull_worker"]),
            ):
                log = self.logs / f"{service.name}-{role}.log"
                process = service.start(*args, log=log)
                self.processes.append((f"{service.name} {role}", process))
                if role == "web":
                    web.append((service, process, log))
        for service, process, log in web:
            wait_http(service.url + "/admin/login/", process, log)
            print(f"demo: the {service.name} serves {service.url}", flush=True)
        # Billing subscribes to new users (pushed to its receiver) and mirrors
        # customers (pulled by its worker).
        self.subscriber.manage(
            "shell",
            "-c",
            "import pubsubpull\n"
            "from django.conf import settings\n"
            "from billing.mirrors import customers\n"
            "pubsubpull.subscribe(settings.CUSTOMERS_URL, 'billing-users',\n"
            f"    '{self.subscriber.url}/hooks/users/', models=['auth.user'],\n"
            "    auth=settings.CUSTOMERS_TOKEN)\n"
            "customers.pull()",
        )

    def stop(self) -> None:
        for _, process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for name, process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"demo: {name} did not stop in time; killing it")
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()

    def watch(self) -> None:
        """Wait for Ctrl-C, or for a process that dies."""
        while True:
            for name, process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}; see {self.logs}/")
            time.sleep(0.5)

    def banner(self) -> None:
        p, s = self.publisher.url, self.subscriber.url
        print(
            f"""
demo: running. Ctrl-C stops everything.

  publisher (customers)  {p}/admin/   log in as admin / admin
  subscriber (billing)   {s}/admin/   admin / admin as well

Try:
  - add or edit a Customer in the publisher's admin, then see who changed what in
    Changes ({p}/admin/pubsubpull/change/) and the customer's History button;
  - watch billing's copy follow: {s}/admin/billing/customercountry/
    and its welcomes to new users: {s}/admin/billing/welcome/
  - subscriptions and their deliveries: {p}/admin/pubsubpull/subscription/
  - the HTTP API: {p}/pubsubpull/ (log in to the admin first, or use a token).
Logs are in {self.logs}/.
"""
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tour", action="store_true", help="run the scripted tour and exit")
    args = parser.parse_args()
    database_url = os.environ["DATABASE_URL"]
    demo = Demo(database_url, Path(os.environ.get("DEMO_LOGS", ROOT / ".demo-logs")))
    # SIGTERM (from a supervisor or CI) stops cleanly, like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        demo.prepare()
        demo.start()
        if args.tour:
            from scripts.tour import run_tour

            run_tour(demo)
            return 0
        demo.banner()
        demo.watch()
    except KeyboardInterrupt:
        print("\ndemo: stopping")
    finally:
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
