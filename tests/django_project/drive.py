"""What the web side of the project does, run as its own process by the tests.

`python drive.py produce`: orders sent with `delay_on_commit`, one transaction rolled
back and one committed, and the queue length seen at each step (no worker runs yet).
`python drive.py check`: waits for the worker's writes and reads them back through the
ORM, and a result through the `django-db` backend. Each prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

import django

django.setup()

from billing.models import Invoice  # noqa: E402
from django.db import transaction  # noqa: E402
from orders.models import Order  # noqa: E402
from orders.tasks import connection_state, ship  # noqa: E402
from proj.celery import app  # noqa: E402

from celeriac.contrib.django.models import TaskResult  # noqa: E402
from celeriac.signals import before_task_publish  # noqa: E402


class Rollback(Exception):
    pass


def queued() -> int:
    return app.broker.size(app.conf.task_default_queue)


def produce() -> dict[str, Any]:
    report: dict[str, Any] = {}
    try:
        with transaction.atomic():
            order = Order.objects.create(reference="rolled-back")
            ship.delay_on_commit(order.pk)
            report["inside_rolled_back"] = queued()
            raise Rollback
    except Rollback:
        pass
    report["after_rollback"] = queued()
    with transaction.atomic():
        order = Order.objects.create(reference="committed")
        ship.delay_on_commit(order.pk)
        report["inside_committed"] = queued()
    report["after_commit"] = queued()
    report["order_id"] = order.pk
    return report


def wait(predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {predicate}")


def check() -> dict[str, Any]:
    order = wait(lambda: Order.objects.filter(reference="committed", shipped=True).first())
    invoice = wait(lambda: Invoice.objects.filter(reference="committed").first())
    row = wait(lambda: TaskResult.objects.filter(task_name="orders.tasks.ship").first())
    first = connection_state.delay().get(timeout=60)
    second = connection_state.delay().get(timeout=60)
    return {
        "shipped_by": order.shipped_by,
        "invoice": invoice.pk,
        "rolled_back_orders": Order.objects.filter(reference="rolled-back").count(),
        "result_row": {"status": row.status, "result": row.result, "worker": row.worker},
        "result_get": app.AsyncResult(row.task_id).get(timeout=10),
        "connection_states": [first, second],
        "timezone": str(app.timezone),
    }


def check_timezone() -> dict[str, Any]:
    seen: list[str] = []

    def record(headers: dict[str, Any], **kwargs: Any) -> None:
        seen.append(headers["eta"])

    before_task_publish.connect(record)
    ship.apply_async((0,), eta=datetime(2030, 1, 15, 9, 0), queue="never-consumed")
    return {"timezone": str(app.timezone), "naive_eta": seen[0]}


COMMANDS = {"produce": produce, "check": check, "check-timezone": check_timezone}

if __name__ == "__main__":
    print(json.dumps(COMMANDS[sys.argv[1]]()), flush=True)
