"""Message-level interoperability with stock Celery 5.7 / kombu 5.7 on RabbitMQ.

Stock producer → our broker decodes it; our producer → kombu sees exactly what we
sent, with the same property and header set a stock producer writes.
"""

from __future__ import annotations

import importlib
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import amqp
import celery
import pytest

from celeriac.brokers.amqp.broker import AMQPBroker
from celeriac.protocol.codec import TaskCall, decode_task, encode_task
from tests.helpers import AMQP_URL, amqp_connection_args, require_rabbitmq, unique

if TYPE_CHECKING:
    from collections.abc import Iterator

    from celeriac.brokers.base import Delivery

pytestmark = [pytest.mark.rabbitmq, pytest.mark.integration]

# kombu is only partly typed; the tests drive it as stock users do.
_kombu: Any = importlib.import_module("kombu")
Connection, Exchange, Queue = _kombu.Connection, _kombu.Exchange, _kombu.Queue

ACCEPT = frozenset({"application/json"})


@pytest.fixture
def queue() -> Iterator[str]:
    require_rabbitmq()
    name = unique("interop")
    yield name
    conn = amqp.Connection(**amqp_connection_args())
    conn.connect()
    channel = conn.channel()
    channel.queue_delete(name)
    channel.exchange_delete(name)
    conn.close()


def stock_app(queue: str, **conf: Any) -> celery.Celery:
    app = celery.Celery("interop", broker=AMQP_URL, set_as_current=False)
    app.conf.task_queues = [
        Queue(queue, Exchange(queue, "direct"), routing_key=queue, max_priority=10)
    ]
    app.conf.update(conf)
    return app


def receive_one(broker: AMQPBroker, queue: str) -> Delivery:
    for _ in range(50):
        got = broker.receive([queue], limit=1, timeout=0.2)
        if got:
            return got[0]
    raise AssertionError("nothing arrived")


def test_a_stock_celery_message_decodes_on_our_broker(queue: str) -> None:
    app = stock_app(queue)
    result = app.send_task(
        "proj.add",
        args=(2, 3),
        kwargs={"z": [1, None]},
        queue=queue,
        priority=7,
        expires=60,
        countdown=0,
        headers={"myhdr": "v", "nested": {"a": None, "b": [1, 2]}},
        time_limit=30,
        soft_time_limit=20,
    )
    broker = AMQPBroker(AMQP_URL, transport_options={"max_priority": 10})
    try:
        delivery = receive_one(broker, queue)
        call = decode_task(delivery.message, accept=ACCEPT)
        broker.ack(delivery)
    finally:
        broker.close()
    assert (delivery.exchange, delivery.routing_key) == ("", queue)
    assert call.name == "proj.add"
    assert call.id == result.id
    assert (call.args, call.kwargs) == ([2, 3], {"z": [1, None]})
    assert call.priority == 7
    assert call.expires is not None
    assert call.expires > datetime.now(timezone.utc)
    assert (call.time_limit, call.soft_time_limit) == (30, 20)
    assert call.headers["myhdr"] == "v"
    assert call.headers["nested"] == {"a": None, "b": [1, 2]}
    assert call.reply_to == app.thread_oid
    assert call.correlation_id == result.id
    props = delivery.message.properties
    assert props["delivery_mode"] == 2
    assert 0 < int(props["expiration"]) <= 60000


def test_a_message_we_publish_reaches_kombu_unchanged(queue: str) -> None:
    call = TaskCall(
        name="proj.add",
        id=str(uuid.uuid4()),
        args=[2, 2],
        kwargs={"k": None},
        priority=5,
        expires=datetime.now(timezone.utc) + timedelta(seconds=60),
        reply_to=str(uuid.uuid4()),
        headers={"myhdr": "v", "nested": [1, {"x": None}]},
    )
    message = encode_task(call)
    broker = AMQPBroker(AMQP_URL, transport_options={"max_priority": 10})
    try:
        broker.publish(message, queue=queue, priority=5)
    finally:
        broker.close()
    with Connection(AMQP_URL) as conn:
        kq = Queue(queue, Exchange(queue, "direct"), routing_key=queue, max_priority=10)
        got = kq(conn.default_channel).get(no_ack=True)
    assert got is not None
    # kombu's channel decodes utf-8 bodies to str; the bytes on the wire are ours.
    body = got.body.encode("utf-8") if isinstance(got.body, str) else got.body
    assert body == message.body
    assert got.headers == message.headers
    assert got.content_type == "application/json"
    assert got.content_encoding == "utf-8"
    assert got.delivery_info["exchange"] == ""
    assert got.delivery_info["routing_key"] == queue
    assert got.properties["correlation_id"] == call.id
    assert got.properties["reply_to"] == call.reply_to
    assert got.properties["delivery_mode"] == 2
    assert got.properties["priority"] == 5
    assert got.properties["expiration"] == message.properties["expiration"]
    # kombu decodes it like any task message from a stock producer.
    assert got.decode() == [[2, 2], {"k": None}, call.embed]


def test_our_message_has_the_same_shape_as_a_stock_one(queue: str) -> None:
    """Property names and header names match a stock send_task of the same call."""
    app = stock_app(queue)
    app.send_task("proj.add", args=(1, 1), queue=queue, priority=3, expires=30)
    ours = encode_task(
        TaskCall(
            name="proj.add",
            id=str(uuid.uuid4()),
            args=[1, 1],
            priority=3,
            reply_to=app.thread_oid,
            expires=datetime.now(timezone.utc) + timedelta(seconds=30),
        )
    )
    broker = AMQPBroker(AMQP_URL, transport_options={"max_priority": 10})
    try:
        broker.publish(ours, queue=queue, priority=3)
        raw = amqp.Connection(**amqp_connection_args())
        raw.connect()
        channel = raw.channel()
        stock_msg = channel.basic_get(queue, no_ack=True)
        our_msg = channel.basic_get(queue, no_ack=True)
        raw.close()
    finally:
        broker.close()
    assert stock_msg is not None
    assert our_msg is not None
    assert set(our_msg.properties) == set(stock_msg.properties)
    assert set(our_msg.headers) == set(stock_msg.headers)
    for key in ("content_type", "content_encoding", "delivery_mode", "priority"):
        assert our_msg.properties[key] == stock_msg.properties[key]
    assert our_msg.delivery_info["exchange"] == stock_msg.delivery_info["exchange"] == ""
