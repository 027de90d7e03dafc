"""Messages and tracing for the SQLite broker tests."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from celeriac.protocol.codec import TaskCall, decode_task, encode_task

if TYPE_CHECKING:
    from celeriac.brokers.base import Delivery
    from celeriac.brokers.sqlite import SQLiteBroker
    from celeriac.protocol.message import Message


ACCEPT = frozenset({"application/json"})


def make_message(n: int = 0, **headers: Any) -> Message:
    call = TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[n])
    call.headers = dict(headers)
    return encode_task(call)


def arg_of(delivery: Delivery) -> Any:
    return decode_task(delivery.message, accept=ACCEPT).args[0]


def statements_of(broker: SQLiteBroker) -> list[str]:
    """Record every statement this thread's connection runs from now on."""
    seen: list[str] = []
    with broker._db.use() as connection:
        connection.set_trace_callback(seen.append)
    return seen
