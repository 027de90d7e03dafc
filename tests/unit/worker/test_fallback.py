"""The fallback for deliveries whose handling raised: requeued a few times, then
dead-lettered with the error, on the in-memory broker."""

from __future__ import annotations

import logging

import pytest

from celeriac.brokers.memory import MemoryBroker
from celeriac.exceptions import BrokerConnectionError
from celeriac.protocol.codec import TaskCall, encode_task
from celeriac.worker.fallback import LIMIT, FallbackRequeues, message_key


@pytest.fixture
def broker() -> MemoryBroker:
    MemoryBroker.reset("memory://fallback")
    broker = MemoryBroker("memory://fallback")
    broker.declare("q")
    return broker


def test_a_message_that_keeps_failing_is_requeued_then_dead_lettered(
    broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    broker.publish(encode_task(TaskCall(name="t.boom", id="boom-1")), queue="q")
    fallback = FallbackRequeues(broker)
    caplog.set_level(logging.ERROR, "celeriac.worker")
    for attempt in range(LIMIT + 1):
        (delivery,) = broker.receive(["q"], limit=1, timeout=1.0)
        fallback.failed(delivery, RuntimeError(f"bug {attempt}"))
    assert fallback.requeued == LIMIT
    assert fallback.dead_lettered == 1
    assert broker.size("q") == 0
    (letter,) = broker.list_dead_letters()
    assert letter.message.headers["id"] == "boom-1"
    assert letter.reason == f"handling failed {LIMIT + 1} times: RuntimeError: bug {LIMIT}"
    # One traceback (the first failure), then one line per failure.
    assert sum(record.exc_info is not None for record in caplog.records) == 1
    assert len(caplog.records) == LIMIT + 1


def test_messages_are_counted_apart(broker: MemoryBroker) -> None:
    for task_id in ("a", "b"):
        broker.publish(encode_task(TaskCall(name="t.boom", id=task_id)), queue="q")
    fallback = FallbackRequeues(broker, limit=1)
    for delivery in broker.receive(["q"], limit=2, timeout=1.0):
        fallback.failed(delivery, RuntimeError("bug"))
    assert fallback.requeued == 2
    assert broker.list_dead_letters() == []


def test_a_message_without_a_task_id_is_known_by_its_body(broker: MemoryBroker) -> None:
    message = encode_task(TaskCall(name="t.boom", id="x"))
    del message.headers["id"]
    broker.publish(message, queue="q")
    (first,) = broker.receive(["q"], limit=1, timeout=1.0)
    broker.reject(first, requeue=True)
    (second,) = broker.receive(["q"], limit=1, timeout=1.0)
    assert message_key(first) == message_key(second)
    assert message_key(first).startswith("body:")


def test_an_unavailable_broker_is_not_counted_against_the_message(broker: MemoryBroker) -> None:
    broker.publish(encode_task(TaskCall(name="t.x", id="full-1")), queue="q")
    fallback = FallbackRequeues(broker, limit=1)
    for _ in range(3):
        (delivery,) = broker.receive(["q"], limit=1, timeout=1.0)
        fallback.failed(delivery, BrokerConnectionError("SQLite broker x.db is full"))
    assert fallback.requeued == 3
    assert broker.list_dead_letters() == []
