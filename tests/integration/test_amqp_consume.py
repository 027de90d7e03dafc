"""Consuming from RabbitMQ: the prefetch window, acks (multiple where correct), queue
sets, and heartbeats while a task runs (extend from another thread)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import amqp
import pytest

from celeriac.brokers.amqp.broker import AMQPBroker
from celeriac.brokers.base import Delivery, Outgoing
from celeriac.protocol.codec import TaskCall, decode_task, encode_task
from tests.helpers import AMQP_URL, amqp_connection_args, require_rabbitmq, unique, wait_for

if TYPE_CHECKING:
    from celeriac.protocol.message import Message

pytestmark = [pytest.mark.rabbitmq, pytest.mark.integration]

ACCEPT = frozenset({"application/json"})
BrokerFactory = Callable[..., AMQPBroker]


def make_message(n: int) -> Message:
    return encode_task(TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[n]))


def arg(delivery: Delivery) -> Any:
    return decode_task(delivery.message, accept=ACCEPT).args[0]


@pytest.fixture
def queues() -> Iterator[list[str]]:
    require_rabbitmq()
    names: list[str] = []
    yield names
    conn = amqp.Connection(**amqp_connection_args())
    conn.connect()
    channel = conn.channel()
    for name in names:
        channel.queue_delete(name)
        channel.exchange_delete(name)
    conn.close()


@pytest.fixture
def make_broker() -> Iterator[BrokerFactory]:
    made: list[AMQPBroker] = []

    def make(**options: Any) -> AMQPBroker:
        broker = AMQPBroker(AMQP_URL, transport_options=options)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def fill(broker: AMQPBroker, queue: str, count: int) -> None:
    broker.publish_many([Outgoing(make_message(n), queue=queue) for n in range(count)])


def drain(broker: AMQPBroker, queue: str, *, limit: int, seconds: float) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got.extend(broker.receive([queue], limit=limit, timeout=0.1))
    return got


def take(broker: AMQPBroker, queue: str, count: int) -> list[Delivery]:
    """Exactly `count` deliveries, asking only for what is still missing."""
    got: list[Delivery] = []
    deadline = time.monotonic() + 5
    while len(got) < count and time.monotonic() < deadline:
        got.extend(broker.receive([queue], limit=count - len(got), timeout=0.1))
    return got


def test_the_window_is_what_the_caller_holds_plus_its_limit(
    make_broker: BrokerFactory, queues: list[str]
) -> None:
    queue = unique("win")
    queues.append(queue)
    first, second = make_broker(), make_broker()
    fill(first, queue, 10)
    held = take(first, queue, 3)
    assert len(held) == 3
    time.sleep(0.2)
    # RabbitMQ pushed nothing more to `first` (its window is full): all the rest is
    # available to another consumer.
    others = drain(second, queue, limit=10, seconds=1.0)
    assert len(others) == 7
    second.ack_many(others)
    second.close()
    # Asking for more widens the window by that much, no more.
    fill(first, queue, 5)
    more = take(first, queue, 2)
    assert len(more) == 2
    time.sleep(0.2)
    third = make_broker()
    assert len(drain(third, queue, limit=10, seconds=0.5)) == 3
    first.ack_many(held + more)


def test_a_zero_limit_takes_nothing(make_broker: BrokerFactory, queues: list[str]) -> None:
    queue = unique("zero")
    queues.append(queue)
    consumer = make_broker()
    fill(consumer, queue, 3)
    assert consumer.receive([queue], limit=0, timeout=0.3) == []
    assert consumer.size(queue) == 3


def test_ack_many_never_acks_a_held_message_it_was_not_given(
    make_broker: BrokerFactory, queues: list[str]
) -> None:
    queue = unique("acks")
    queues.append(queue)
    consumer = make_broker()
    fill(consumer, queue, 6)
    got = drain(consumer, queue, limit=6, seconds=0.5)
    assert [arg(d) for d in got] == list(range(6))
    # Ack 0, 1, 3, 5 but not 2 and 4: a multiple ack must stop below 2.
    consumer.ack_many([got[0], got[1], got[3], got[5]])
    assert consumer.stats().acked == 4
    consumer.close()  # 2 and 4 go back to the queue
    other = make_broker()
    back = drain(other, queue, limit=10, seconds=0.7)
    assert sorted(arg(d) for d in back) == [2, 4]
    assert all(d.redelivered for d in back)
    other.ack_many(back)


def test_ack_many_of_everything_leaves_nothing_behind(
    make_broker: BrokerFactory, queues: list[str]
) -> None:
    queue = unique("acks")
    queues.append(queue)
    consumer = make_broker()
    fill(consumer, queue, 50)
    got = drain(consumer, queue, limit=50, seconds=0.7)
    assert len(got) == 50
    consumer.ack_many(got[::-1])
    consumer.close()
    assert drain(make_broker(), queue, limit=50, seconds=0.5) == []


def test_a_queue_dropped_from_the_request_keeps_its_messages(
    make_broker: BrokerFactory, queues: list[str]
) -> None:
    one, two = unique("q1"), unique("q2")
    queues.extend([one, two])
    consumer = make_broker()
    fill(consumer, one, 3)
    fill(consumer, two, 3)
    got: list[Delivery] = []
    deadline = time.monotonic() + 2
    while len(got) < 2 and time.monotonic() < deadline:
        got.extend(consumer.receive([one, two], limit=2 - len(got), timeout=0.2))
    consumer.ack_many(got)
    # Now only `one`: what was prefetched for `two` goes back to `two`.
    rest = drain(consumer, one, limit=10, seconds=0.5)
    assert {d.queue for d in rest} == {one}
    consumer.ack_many(rest)
    taken_from_two = sum(1 for d in got if d.queue == two)
    assert wait_for(lambda: consumer.size(two) == 3 - taken_from_two, timeout=5)


def test_an_ack_from_another_thread_does_not_wait_for_a_blocked_receive(
    make_broker: BrokerFactory, queues: list[str]
) -> None:
    queue, idle = unique("q"), unique("idle")
    queues.extend([queue, idle])
    consumer = make_broker()
    fill(consumer, queue, 1)
    [delivery] = drain(consumer, queue, limit=1, seconds=0.3)
    waiting = threading.Thread(
        target=consumer.receive, args=([queue],), kwargs={"limit": 1, "timeout": 3}
    )
    waiting.start()
    time.sleep(0.2)
    started = time.monotonic()
    consumer.ack(delivery)
    took = time.monotonic() - started
    waiting.join(5)
    assert took < 0.5
    assert consumer.stats().acked == 1


def hold_for(consumer: AMQPBroker, seconds: float, *, extend: bool) -> None:
    """Hold a delivery without reading the connection, as a process running a task
    does; with `extend`, a renewal thread calls extend() every 0.3 s."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(0.3):
            consumer.extend([], seconds=1)

    renewer = threading.Thread(target=renew)
    if extend:
        renewer.start()
    time.sleep(seconds)
    stop.set()
    if extend:
        renewer.join(5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("keepalive", "extend", "survives"),
    [(False, True, True), (True, False, True), (False, False, False)],
    ids=["extend-only", "keepalive-thread-only", "neither"],
)
def test_heartbeats_keep_a_busy_consumer_connected(
    make_broker: BrokerFactory, queues: list[str], keepalive: bool, extend: bool, survives: bool
) -> None:
    queue = unique("hb")
    queues.append(queue)
    consumer = make_broker(heartbeat=1, keepalive=keepalive)
    consumer.publish(make_message(1), queue=queue)
    [delivery] = drain(consumer, queue, limit=1, seconds=0.3)
    hold_for(consumer, 4.5, extend=extend)
    consumer.ack(delivery)
    # If RabbitMQ dropped the connection for missed heartbeats, the message went back.
    other = make_broker()
    back = drain(other, queue, limit=1, seconds=0.5)
    if survives:
        assert back == []
        assert consumer.stats().acked == 1
    else:
        assert [d.message.task_id for d in back] == [delivery.message.task_id]
        assert back[0].redelivered
        other.ack_many(back)


def test_extend_and_receive_from_different_threads_lose_nothing(
    make_broker: BrokerFactory, queues: list[str]
) -> None:
    queue = unique("race")
    queues.append(queue)
    consumer = make_broker()
    fill(consumer, queue, 300)
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            while not stop.is_set():
                consumer.extend([], seconds=1)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=hammer)
    thread.start()
    seen: list[Any] = []
    try:
        deadline = time.monotonic() + 20
        while len(seen) < 300 and time.monotonic() < deadline:
            batch = consumer.receive([queue], limit=16, timeout=0.2)
            seen.extend(arg(d) for d in batch)
            consumer.ack_many(batch)
    finally:
        stop.set()
        thread.join(5)
    assert errors == []
    assert sorted(seen) == list(range(300))


def test_a_per_consumer_ack_timeout_can_be_given(
    make_broker: BrokerFactory, queues: list[str]
) -> None:
    """`consumer_timeout` becomes x-consumer-timeout (RabbitMQ >= 3.12 honours it;
    older servers accept and ignore it), so consuming works either way."""
    queue = unique("ct")
    queues.append(queue)
    consumer = make_broker(consumer_timeout=7200)
    assert consumer._consumer._consume_arguments == {"x-consumer-timeout": 7_200_000}
    fill(consumer, queue, 1)
    [delivery] = take(consumer, queue, 1)
    consumer.ack(delivery)


def test_deliveries_of_any_size_and_header_read_as_py_amqp_reads_them(
    make_broker: BrokerFactory, queues: list[str]
) -> None:
    # Most deliveries are decoded from the frames by the consumer itself; a body cut
    # into many frames, or header values it leaves to py-amqp (a decimal, a timestamp),
    # must come out as py-amqp gives them, whichever path reads them.
    queue = unique("consume-shapes")
    queues.append(queue)
    broker = make_broker()
    broker.declare(queue)
    headers: dict[str, Any] = {
        "task": "tests.echo",
        "id": "1",
        "price": Decimal("12.50"),
        "when": datetime(2026, 12, 7, 8, 0, 0),
        "nested": {"list": [1, None, True, 2.5, "é"], "raw": b"\xff\x00"},
        "big": 2**40,
    }
    bodies = [b"", b"small", bytes(range(256)) * 4096]  # the last is 1 MiB: 9 body frames
    conn = amqp.Connection(**amqp_connection_args())
    conn.connect()
    try:
        channel = conn.channel()
        for n, body in enumerate(bodies):
            channel.basic_publish(
                amqp.Message(
                    body,
                    content_type="application/octet-stream",
                    content_encoding="binary",
                    application_headers={**headers, "id": str(n)},
                    correlation_id=str(n),
                    priority=3,
                ),
                exchange="",
                routing_key=queue,
            )
        got = take(broker, queue, len(bodies))
        assert [d.message.body for d in got] == bodies
        for n, delivery in enumerate(got):
            assert delivery.message.headers == {**headers, "id": str(n)}
            assert delivery.message.properties["correlation_id"] == str(n)
            assert delivery.message.properties["priority"] == 3
            assert delivery.routing_key == queue
        broker.ack_many(got)
        assert broker.size(queue) == 0
    finally:
        conn.close()


def test_the_first_receive_takes_the_whole_first_window(
    make_broker: BrokerFactory, queues: list[str]
) -> None:
    # Right after basic.consume RabbitMQ sends up to the window in a burst; a process
    # that starts a task as soon as its first fetch returns (a prefork child) must hold
    # all of it, not one delivery with the rest left in its connection.
    for round_ in range(5):
        queue = unique(f"consume-first-window-{round_}")
        queues.append(queue)
        producer = make_broker()
        producer.declare(queue)
        fill(producer, queue, 40)
        consumer = make_broker()
        got = consumer.receive([queue], limit=40, timeout=5)
        assert len(got) == 40
        consumer.ack_many(got)
