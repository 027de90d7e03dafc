"""A small project to try the operator's commands on (see docs/operations.md).

celeriac -A fleet worker -E -n worker1@%h
celeriac -A fleet inspect ping
celeriac -A fleet call fleet.add --args '[2, 3]' --wait 10
python monitor.py          # what the events say, for ten seconds
"""

from __future__ import annotations

import os

from celeriac import Celeriac

BROKER = os.environ.get("CELERIAC_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celeriac("fleet", broker=BROKER, backend=BROKER)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def fail(message: str) -> None:
    raise ValueError(message)
