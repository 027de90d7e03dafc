"""The autoscaler's backlog gauge: measured on request, on its own thread; stale or
failing measures count as nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from celeriac.brokers.memory import MemoryBroker
from celeriac.exceptions import BrokerConnectionError
from celeriac.protocol.message import Message
from celeriac.worker.pools.prefork.backlog import STALE_AFTER, BacklogGauge
from tests.helpers import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def broker() -> Any:
    # Memory brokers of one URL share their queues: one URL per test.
    broker = MemoryBroker(f"memory://{uuid.uuid4().hex}")
    for n in range(3):
        broker.publish(Message(headers={"id": f"m{n}"}, body=b"{}"), queue="work")
    yield broker
    broker.close()


def test_the_backlog_is_the_messages_waiting_in_every_queue(broker: MemoryBroker) -> None:
    broker.publish(Message(headers={"id": "other"}, body=b"{}"), queue="other")
    gauge = BacklogGauge(lambda: broker, ("work", "other"))
    assert gauge.latest() == 0  # nothing measured yet
    gauge.measure()
    assert gauge.latest() == 4


def test_a_stale_measure_counts_as_nothing(broker: MemoryBroker) -> None:
    clock = Clock()
    gauge = BacklogGauge(lambda: broker, ("work",), clock=clock)
    gauge.measure()
    clock.now += STALE_AFTER + 0.1
    assert gauge.latest() == 0


def test_the_thread_measures_when_asked_and_survives_a_broker_error(
    broker: MemoryBroker,
) -> None:
    calls = []

    class Flaky(MemoryBroker):
        def size(self, queue: str) -> int:
            calls.append(queue)
            if len(calls) == 1:
                raise BrokerConnectionError("down")
            return broker.size(queue)

    gauge = BacklogGauge(lambda: Flaky("memory://backlog-flaky"), ("work",))
    gauge.start()
    try:
        wait_for(lambda: gauge.latest() == 3, timeout=5, what="a measure after the error")
    finally:
        gauge.stop()
    assert len(calls) >= 2
