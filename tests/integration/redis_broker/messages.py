"""Messages of the Redis broker tests, and a receive loop."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from celeriac.protocol.codec import TaskCall, decode_task, encode_task

if TYPE_CHECKING:
    from celeriac.brokers.base import Delivery
    from celeriac.brokers.redis import RedisBroker
    from celeriac.protocol.message import Message


ACCEPT = frozenset({"application/json"})
SEP = "\x06\x16"


def make_message(n: int = 0, *, priority: int | None = None, **headers: Any) -> Message:
    call = TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[n], priority=priority)
    call.headers = dict(headers)
    return encode_task(call)


def arg_of(delivery: Delivery) -> Any:
    return decode_task(delivery.message, accept=ACCEPT).args[0]


def receive_n(broker: RedisBroker, queue: str, count: int, timeout: float = 5.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(broker.receive([queue], limit=count - len(got), timeout=0.5))
    return got
