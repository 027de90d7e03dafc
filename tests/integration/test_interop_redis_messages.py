"""Message-level interoperability with stock Celery 5.7 / kombu 5.7 on Redis: their
producers feed our consumer, ours feed kombu's consumer, and each side restores the
other's in-flight messages. No worker involved."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import celery
import pytest
import redis
from kombu.connection import Connection as _KombuConnection

from celeriac._time import utcnow
from celeriac.brokers import create_broker
from celeriac.brokers.redis import RedisBroker
from celeriac.protocol.codec import TaskCall, decode_task, encode_task
from tests.helpers import REDIS_URL, require_redis, unique

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from celeriac.brokers.base import Delivery

pytestmark = pytest.mark.redis

# kombu is only partly typed; the tests use it as a black box.
KombuConnection: Any = _KombuConnection

ACCEPT = frozenset({"application/json"})


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis()
    value = unique("ri") + ":"
    yield value
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{value}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def make_broker(prefix: str) -> Iterator[Callable[..., RedisBroker]]:
    made: list[RedisBroker] = []

    def make(consumer: str = "c1", **options: Any) -> RedisBroker:
        broker = create_broker(
            REDIS_URL,
            transport_options={"global_keyprefix": prefix, **options},
            consumer_id=f"{prefix}{consumer}",
        )
        assert isinstance(broker, RedisBroker)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def stock_app(prefix: str) -> Iterator[celery.Celery]:
    app = celery.Celery("interop", broker=REDIS_URL, set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": prefix}
    yield app
    app.close()


@pytest.fixture
def kombu_connection(prefix: str) -> Iterator[Any]:
    connection = KombuConnection(
        REDIS_URL, transport_options={"global_keyprefix": prefix, "visibility_timeout": 3600}
    )
    yield connection
    connection.release()


def receive_one(broker: RedisBroker, queue: str, timeout: float = 5.0) -> Delivery:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = broker.receive([queue], limit=1, timeout=0.5)
        if got:
            return got[0]
    pytest.fail(f"nothing arrived in {queue}")


def test_stock_send_task_is_received_and_decoded(stock_app, make_broker) -> None:
    broker = make_broker()
    result = stock_app.send_task(
        "proj.add",
        args=(2, 3),
        kwargs={"scale": 10},
        countdown=30,
        priority=5,
        headers={"myhdr": "v"},
        queue="q",
    )
    delivery = receive_one(broker, "q")
    call = decode_task(delivery.message, accept=ACCEPT)
    assert call.name == "proj.add"
    assert call.id == result.id
    assert call.args == [2, 3]
    assert call.kwargs == {"scale": 10}
    assert call.headers == {"myhdr": "v"}
    assert call.eta is not None
    assert call.eta > utcnow() + timedelta(seconds=20)
    assert call.priority == 5
    assert delivery.queue == "q"
    assert delivery.delivery_info == {
        "exchange": "",
        "routing_key": "q",
        "priority": 5,
        "redelivered": False,
    }
    broker.ack(delivery)


def test_stock_priorities_follow_redis_order(stock_app, make_broker) -> None:
    broker = make_broker()
    for n, priority in enumerate([9, 0, 5]):
        stock_app.send_task("proj.add", args=(n,), priority=priority, queue="q")
    time.sleep(0.05)
    got = broker.receive(["q"], limit=3, timeout=2)
    assert [decode_task(d.message, accept=ACCEPT).args[0] for d in got] == [1, 2, 0]


def test_our_message_is_consumed_by_kombu(make_broker, kombu_connection) -> None:
    broker = make_broker()
    call = TaskCall(name="proj.add", id=str(uuid.uuid4()), args=[1, 2], priority=3)
    call.headers = {"custom": {"nested": [1, None]}}
    message = encode_task(call)
    broker.publish(message, queue="q", priority=3)
    queue = kombu_connection.SimpleQueue("q")
    try:
        received = queue.get(timeout=5)
        assert received.headers == message.headers
        assert received.body == message.body
        assert received.content_type == "application/json"
        assert received.properties["priority"] == 3
        assert received.properties["correlation_id"] == call.id
        assert received.delivery_info["routing_key"] == "q"
        assert received.payload == [[1, 2], {}, call.embed]
        received.ack()
    finally:
        queue.close()


def test_stock_producer_wakes_our_blocked_receive(make_broker, kombu_connection) -> None:
    broker = make_broker()
    broker.receive(["q"], limit=1, timeout=0)

    def send() -> None:
        producer = kombu_connection.Producer()
        producer.publish({"x": 1}, routing_key="q", exchange="", serializer="json")

    timer = threading.Timer(0.3, send)
    timer.start()
    started = time.monotonic()
    got = broker.receive(["q"], limit=1, timeout=10)
    waited = time.monotonic() - started
    timer.join()
    assert len(got) == 1
    assert got[0].message.body == b'{"x": 1}'
    assert waited < 1.5


def test_kombu_restores_our_in_flight_message(make_broker, kombu_connection) -> None:
    broker = make_broker()
    message = encode_task(TaskCall(name="proj.add", id=str(uuid.uuid4()), args=[7]))
    broker.publish(message, queue="q")
    held = receive_one(broker, "q")
    channel = kombu_connection.default_channel
    channel.qos.restore_by_tag(held.tag)
    again = receive_one(broker, "q")
    assert again.tag == held.tag
    assert again.redelivered
    assert again.message.headers["redelivered"] is True
    assert again.message.body == message.body
    broker.ack(again)


def test_kombus_sweep_restores_our_lapsed_message(make_broker, prefix) -> None:
    broker = make_broker(visibility_timeout=0.3)
    broker.publish(encode_task(TaskCall(name="proj.add", id="t-1", args=[1])), queue="q")
    held = receive_one(broker, "q")
    time.sleep(0.5)
    connection = KombuConnection(
        REDIS_URL, transport_options={"global_keyprefix": prefix, "visibility_timeout": 0.3}
    )
    try:
        connection.default_channel.qos.restore_visible(num=100)
    finally:
        connection.release()
    again = receive_one(broker, "q")
    assert again.tag == held.tag
    assert again.redelivered


def test_we_restore_a_kombu_consumers_lapsed_message(make_broker, prefix) -> None:
    connection = KombuConnection(REDIS_URL, transport_options={"global_keyprefix": prefix})
    try:
        queue = connection.SimpleQueue("q")
        queue.put({"n": 1})
        taken = queue.get(timeout=5)  # leased by kombu, never acked: the worker "died"
        assert taken.payload == {"n": 1}
        broker = make_broker(visibility_timeout=0.3)
        time.sleep(0.5)
        assert broker.restore_expired() == 1
        back = receive_one(broker, "q")
        assert back.tag == taken.delivery_tag
        assert back.redelivered
        assert back.exchange == "q"
        assert back.message.body == b'{"n": 1}'
        broker.ack(back)
    finally:
        connection.release()


def test_kombu_consumes_a_promoted_eta_message(make_broker, kombu_connection) -> None:
    broker = make_broker()
    message = encode_task(TaskCall(name="proj.add", id=str(uuid.uuid4()), args=[1]))
    broker.publish(message, queue="q", eta=utcnow() + timedelta(seconds=0.2))
    time.sleep(0.3)
    broker.receive(["other"], limit=1, timeout=0)  # any live consumer promotes it
    queue = kombu_connection.SimpleQueue("q")
    try:
        received = queue.get(timeout=5)
        assert received.headers["id"] == message.headers["id"]
        received.ack()
    finally:
        queue.close()


def test_without_broker_side_eta_stock_workers_get_eta_messages_at_once(
    make_broker, kombu_connection
) -> None:
    broker = make_broker(broker_side_eta=False)
    eta = utcnow() + timedelta(hours=1)
    call = TaskCall(name="proj.add", id=str(uuid.uuid4()), args=[1], eta=eta)
    broker.publish(encode_task(call), queue="q", eta=eta)
    queue = kombu_connection.SimpleQueue("q")
    try:
        received = queue.get(timeout=5)  # a stock worker holds it until its eta header
        assert received.headers["eta"] == eta.isoformat()
        received.ack()
    finally:
        queue.close()
