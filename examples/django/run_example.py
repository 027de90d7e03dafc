"""The Django recipe end to end: migrate, start a worker, place an order through a view,
and read the task's result back through the ORM (what the admin shows).

Run from this directory: `python run_example.py`. Everything lives in SQLite files here
(`site.db` for the site and the results, `broker.db` for the queue); no server needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit("timed out")


def main() -> int:
    os.chdir(HERE)
    for name in ("site.db", "broker.db", "broker.db-wal", "broker.db-shm"):
        (HERE / name).unlink(missing_ok=True)
    os.environ["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], check=True)
    print("$ celeriac -A mysite worker -l info", flush=True)
    worker = subprocess.Popen([sys.executable, "-m", "celeriac", "-A", "mysite", "worker"])
    try:
        sys.path.insert(0, str(HERE))
        import django

        django.setup()
        from django.test import Client
        from shop.models import Order

        from celeriac.contrib.django.models import TaskResult

        response = Client().get("/orders/A-1001/", HTTP_HOST="localhost")
        print("GET /orders/A-1001/ ->", response.json(), flush=True)
        order = wait(lambda: Order.objects.filter(reference="A-1001", confirmed=True).first())
        print("order confirmed by the worker:", order.confirmed, flush=True)
        row = wait(lambda: TaskResult.objects.filter(task_name="shop.tasks.confirm").first())
        print(f"stored result: {row.task_name} {row.status} {row.result}", flush=True)

        from django.contrib.auth.models import User

        admin = User.objects.create_superuser("admin", "admin@example.com", "example")
        client = Client()
        client.force_login(admin)
        page = client.get("/admin/celeriac/taskresult/", HTTP_HOST="localhost")
        listed = page.status_code == 200 and row.task_id in page.content.decode()
        print("the admin lists the result:", listed, flush=True)
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
        print("worker exited with code", code, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
