"""The room a consumer waits for before it fetches (`Holdings.room`)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING

from celeriac.protocol.codec import TaskCall, encode_task
from celeriac.worker.holdings import Holdings, Shutdown

if TYPE_CHECKING:
    from celeriac import Celeriac
    from celeriac.brokers.base import Delivery


def held(app: Celeriac, holdings: Holdings, n: int) -> list[Delivery]:
    for _ in range(n):
        call = TaskCall(name="tests.add", id=str(uuid.uuid4()), args=[1, 2])
        app.broker.publish(encode_task(call), queue="celery")
    deliveries = app.broker.receive(["celery"], limit=n, timeout=1)
    assert len(deliveries) == n
    holdings.hold(deliveries)
    return deliveries


def test_one_free_place_is_enough_by_default(app: Celeriac) -> None:
    holdings = Holdings(app.broker, Shutdown(), window=8)
    deliveries = held(app, holdings, 8)
    holdings.release(deliveries[0])
    started = time.monotonic()
    assert holdings.room(wait=5) == 1
    assert time.monotonic() - started < 1


def test_a_batch_is_waited_for_while_as_many_wait_to_start(app: Celeriac) -> None:
    holdings = Holdings(app.broker, Shutdown(), window=8)
    deliveries = held(app, holdings, 8)  # none running: all 8 wait to start
    holdings.release(deliveries[0])

    def free_three() -> None:
        for delivery in deliveries[1:4]:
            holdings.release(delivery)

    freed = threading.Timer(0.3, free_three)
    started = time.monotonic()
    freed.start()
    try:
        assert holdings.room(wait=5, batch=4) == 4
    finally:
        freed.join()
    assert time.monotonic() - started >= 0.3
    # Past `wait`, what is free is taken.
    holdings.hold(deliveries[:3])
    assert holdings.room(wait=0.2, batch=4) == 1


def test_no_batch_is_waited_for_when_few_wait_to_start(app: Celeriac) -> None:
    holdings = Holdings(app.broker, Shutdown(), window=8)
    deliveries = held(app, holdings, 8)
    for delivery in deliveries[:6]:
        holdings.claim(delivery)
        holdings.starting(delivery)  # 6 running, 2 waiting: fewer than the batch
    holdings.release(deliveries[0])
    started = time.monotonic()
    assert holdings.room(wait=5, batch=4) == 1
    assert time.monotonic() - started < 1
