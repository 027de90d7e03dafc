"""Publishing to RabbitMQ: confirms, nacks, batches, threads, header tables, errors."""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import amqp
import pytest

from celeriac.brokers.amqp.broker import AMQPBroker
from celeriac.brokers.base import Delivery, Outgoing
from celeriac.exceptions import BrokerConnectionError, PublishError, SerializationError
from celeriac.protocol.codec import TaskCall, encode_task
from tests.helpers import AMQP_URL, amqp_connection_args, amqp_url, require_rabbitmq, unique

if TYPE_CHECKING:
    from collections.abc import Iterator

    from celeriac.protocol.message import Message

pytestmark = [pytest.mark.rabbitmq, pytest.mark.integration]


def make_message(n: int = 0, headers: dict[str, Any] | None = None) -> Message:
    call = TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[n])
    call.headers = dict(headers or {})
    return encode_task(call)


def raw_channel() -> tuple[amqp.Connection, amqp.Channel]:
    conn = amqp.Connection(**amqp_connection_args())
    conn.connect()
    channel = conn.channel()
    channel.auto_decode = False
    return conn, channel


@pytest.fixture
def queues() -> Iterator[list[str]]:
    """Names to delete (queue and same-named exchange) after the test."""
    names: list[str] = []
    yield names
    conn, channel = raw_channel()
    try:
        for name in names:
            channel.queue_delete(name)
            channel.exchange_delete(name)
    finally:
        conn.close()


@pytest.fixture
def broker() -> Iterator[AMQPBroker]:
    require_rabbitmq()
    made = AMQPBroker(AMQP_URL, transport_options={"dead_letter_queue": unique("dl")})
    made.connect()
    yield made
    made.close()


def receive(broker: AMQPBroker, queue: str, count: int) -> list[Delivery]:
    got: list[Delivery] = []
    for _ in range(50):
        got.extend(broker.receive([queue], limit=count - len(got), timeout=0.2))
        if len(got) >= count:
            break
    return got


def test_publish_returns_after_the_message_is_queued(broker: AMQPBroker, queues: list[str]) -> None:
    queue = unique("pub")
    queues.append(queue)
    broker.publish(make_message(), queue=queue)
    # Confirmed means queued: a plain basic.get sees it at once, no waiting.
    conn, channel = raw_channel()
    try:
        assert channel.queue_declare(queue, passive=True).message_count == 1
    finally:
        conn.close()


def test_a_nack_raises_publish_error(broker: AMQPBroker, queues: list[str]) -> None:
    queue = unique("full")
    queues.append(queue)
    # A queue that refuses new messages when full makes RabbitMQ nack the publish.
    conn, channel = raw_channel()
    channel.queue_declare(
        queue,
        durable=True,
        auto_delete=False,
        arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
    )
    channel.exchange_declare(queue, "direct", durable=True, auto_delete=False)
    conn.close()
    options = {"queue_arguments": {queue: {"x-max-length": 1, "x-overflow": "reject-publish"}}}
    strict = AMQPBroker(AMQP_URL, transport_options=options)
    try:
        strict.publish(make_message(1), queue=queue)
        with pytest.raises(PublishError, match="refused 1 of 1"):
            strict.publish(make_message(2), queue=queue)
        # The connection is still good afterwards.
        strict.purge(queue)
        strict.publish(make_message(3), queue=queue)
    finally:
        strict.close()


def test_publish_many_confirms_a_batch_at_once(broker: AMQPBroker, queues: list[str]) -> None:
    queue = unique("batch")
    queues.append(queue)
    broker.publish_many([Outgoing(make_message(n), queue=queue) for n in range(500)])
    assert broker.size(queue) == 500
    assert broker.stats().published == 500


def test_many_threads_publish_at_once(broker: AMQPBroker, queues: list[str]) -> None:
    queue = unique("threads")
    queues.append(queue)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for n in range(100):
                broker.publish(make_message(n), queue=queue)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert broker.size(queue) == 1200
    # Pooled: never more connections than the pool limit (10 by default).
    assert broker._publisher.pool.size <= 10


def test_header_tables_carry_nulls_nested_arrays_and_tables(
    broker: AMQPBroker, queues: list[str]
) -> None:
    queue = unique("hdr")
    queues.append(queue)
    custom = {
        "nothing": None,
        "nested": [1, [2, None], {"a": None, "b": [True, "x"]}],
        "table": {"deep": {"deeper": [1.5, -7]}},
        "big": 2**40,
        "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        "money": Decimal("1.25"),
    }
    message = make_message(headers=custom)
    broker.publish(message, queue=queue)
    [delivery] = receive(broker, queue, 1)
    for key in ("nothing", "nested", "table", "big", "money"):
        assert delivery.message.headers[key] == custom[key]
    assert delivery.message.headers["when"].replace(tzinfo=timezone.utc) == custom["when"]
    assert delivery.message.headers["stamps"] == {}
    assert delivery.message.headers["timelimit"] == [None, None]
    broker.ack(delivery)


def test_headers_an_amqp_table_cannot_carry_are_refused_before_sending(
    broker: AMQPBroker, queues: list[str]
) -> None:
    queue = unique("bad")
    queues.append(queue)
    with pytest.raises(SerializationError, match="set"):
        broker.publish(make_message(headers={"odd": {1, 2}}), queue=queue)
    with pytest.raises(SerializationError, match="64 bits"):
        broker.publish(make_message(headers={"huge": 2**70}), queue=queue)
    broker.publish(make_message(), queue=queue)
    assert broker.size(queue) == 1


def test_a_queue_deleted_after_declaring_is_declared_again(
    broker: AMQPBroker, queues: list[str]
) -> None:
    queue = unique("gone")
    queues.append(queue)
    broker.publish(make_message(1), queue=queue)
    conn, channel = raw_channel()
    channel.queue_delete(queue)
    conn.close()
    # The broker's declaration cache is stale now; the mandatory flag brings the
    # message back, the queue is declared again and the message delivered.
    broker.publish(make_message(2), queue=queue)
    assert broker.size(queue) == 1


def test_publish_to_a_named_exchange_with_a_routing_key(
    broker: AMQPBroker, queues: list[str]
) -> None:
    queue = unique("named")
    exchange = unique("ex")
    queues.extend([queue, exchange])
    broker.publish(make_message(4), queue=queue, exchange=exchange, routing_key="some.key")
    [delivery] = receive(broker, queue, 1)
    assert (delivery.exchange, delivery.routing_key) == (exchange, "some.key")
    broker.ack(delivery)
    # Celery's default layout: the queue's own direct exchange routes its name too.
    broker.publish(make_message(5), queue=queue, exchange=queue, routing_key=queue)
    [delivery] = receive(broker, queue, 1)
    assert (delivery.exchange, delivery.routing_key) == (queue, queue)
    broker.ack(delivery)


def test_unreachable_broker_raises_connection_error_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = AMQPBroker(
        "amqp://someone:hunter2-secret@127.0.0.1:1//",
        transport_options={"publish_retry_timeout": 0.5, "connect_timeout": 0.5},
    )
    with pytest.raises(BrokerConnectionError) as excinfo:
        broker.publish(make_message(), queue="never")
    assert "hunter2-secret" not in str(excinfo.value)
    assert "hunter2-secret" not in caplog.text
    assert "someone@127.0.0.1:1" in str(excinfo.value)
    broker.close()


def test_wrong_password_fails_fast_and_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    require_rabbitmq()
    caplog.set_level(logging.DEBUG)
    broker = AMQPBroker(
        amqp_url(password="wrong-pass-xyz"),
        transport_options={"publish_retry_timeout": 30},
    )
    with pytest.raises(BrokerConnectionError, match="refused") as excinfo:
        broker.connect()
    assert "wrong-pass-xyz" not in str(excinfo.value)
    assert "wrong-pass-xyz" not in caplog.text
    assert "wrong-pass-xyz" not in broker.safe_url()
    broker.close()
