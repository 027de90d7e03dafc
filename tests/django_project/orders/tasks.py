"""Tasks of the orders app: found by `autodiscover_tasks()`, and they import models."""

from __future__ import annotations

import os
from typing import Any

from django.db import connection

from celeriac import shared_task
from orders.models import Order


@shared_task
def ship(order_id: int) -> str:
    order = Order.objects.get(pk=order_id)
    order.shipped = True
    order.shipped_by = os.getpid()
    order.save()
    from billing.tasks import invoice

    invoice.delay(order.reference)
    return order.reference


@shared_task
def connection_state() -> dict[str, Any]:
    """Whether this task started with a database connection already open."""
    from proj import celery

    open_at_start = connection.connection is not None
    Order.objects.count()  # leaves a connection open for the next task
    return {
        "open_at_start": open_at_start,
        "pid": os.getpid(),
        "child_started_with_connection": celery.child_started_with_connection,
    }
