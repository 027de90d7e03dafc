"""Helpers of the canvas tests: the fixture app's tasks, the messages a send published, a
JSON round trip, and a deeply nested canvas.

Nothing is sent by building a canvas; the tests that send one read what was published off
the memory broker, decoded as a worker would. `tests/integration/test_canvas_worker.py`
runs canvases on a real worker.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from celeriac import chain, chord, group
from celeriac.protocol.codec import TaskCall, decode_task

if TYPE_CHECKING:
    from celeriac import Celeriac
    from celeriac.canvas import _chain


def add(app: Celeriac) -> Any:
    return app.tasks["tests.add"]


def tsum(app: Celeriac) -> Any:
    return app.tasks["tests.tsum"]


def sent(app: Celeriac, queue: str = "celery") -> list[TaskCall]:
    """Take every message off `queue` and decode it as a worker would."""
    broker = app.broker
    deliveries = broker.receive([queue], limit=10_000, timeout=0)
    for delivery in deliveries:
        broker.ack(delivery)
    return [decode_task(d.message, accept=frozenset({"application/json"})) for d in deliveries]


def through_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def nested_canvas(app: Celeriac) -> _chain:
    """A chain of a task, a group of chords and chains, and a chord with a chain header."""
    inner = chord([add(app).s(1, 1), add(app).si(2, 2)], tsum(app).s().set(queue="q"))
    return chain(
        add(app).s(1, 1),
        group(inner, chain(add(app).s(3), add(app).s(4)), add(app).s(5).on_error(tsum(app).s())),
        chord([chain(add(app).s(1), group(add(app).s(2), add(app).s(3)))], tsum(app).s()),
        add(app).s(6),
    )
