"""A small project to watch in the dashboard (see docs/dashboard.md).

celeriac -A shop worker -E -P threads -c 4      # a worker sending task events
celeriac -A shop dashboard                      # http://127.0.0.1:5555/
python traffic.py                               # chains, a chord, failures, ETAs
"""

from __future__ import annotations

import os
import random
import time

from celeriac import Celeriac

BROKER = os.environ.get("CELERIAC_BROKER_URL", "redis://127.0.0.1:6379/0")

# Sent events give the queue page its arrival rates; extended results keep a task's name
# and arguments in the backend, for its page after a dashboard restart.
app = Celeriac(
    "shop", broker=BROKER, backend=BROKER, task_send_sent_event=True, result_extended=True
)


@app.task
def reserve(order: int) -> int:
    time.sleep(random.uniform(0.01, 0.2))
    return order


@app.task
def charge(order: int) -> int:
    if order % 7 == 0:
        raise ValueError(f"card declined for order {order}")
    time.sleep(random.uniform(0.01, 0.1))
    return order


@app.task
def ship(order: int) -> str:
    return f"order {order} shipped"


@app.task
def total(amounts: list[int]) -> int:
    return sum(amounts)
