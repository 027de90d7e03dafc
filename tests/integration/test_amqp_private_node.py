"""Tests that need a PRIVATE RabbitMQ node: outages and TLS.

Outages: producers and consumers reconnect with backoff, declare again and go on;
nothing confirmed is lost. TLS: `amqps://` with certificate and host name checks.

The node (own name, ports, mnesia and log dirs, throwaway TLS certificates, all in a
tmp dir) is started once for the module, so that stopping it cannot disturb anybody
else, and stopped by pid at the end.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from celeriac._time import utcnow
from celeriac.brokers.amqp.broker import AMQPBroker
from celeriac.brokers.base import Delivery, Outgoing
from celeriac.exceptions import BrokerConnectionError, PublishError
from celeriac.protocol.codec import TaskCall, encode_task
from tests.helpers import unique, wait_for

if TYPE_CHECKING:
    from celeriac.protocol.message import Message
    from tests.private_servers import Node

pytestmark = [pytest.mark.rabbitmq, pytest.mark.integration, pytest.mark.slow]


def make_message(n: int) -> Message:
    return encode_task(TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[n]))


def broker_for(node: Node, **options: Any) -> AMQPBroker:
    options.setdefault("publish_retry_timeout", 30)
    options.setdefault("retry_interval_max", 0.5)
    return AMQPBroker(node.url, transport_options=options)


def test_producer_and_consumer_ride_out_a_restart_and_lose_nothing_confirmed(node: Node) -> None:
    queue = unique("outage")
    producer, consumer = broker_for(node), broker_for(node)
    confirmed: list[str] = []
    errors: list[BaseException] = []
    received: set[str] = set()
    total = 300

    def produce() -> None:
        for n in range(total):
            message = make_message(n)
            try:
                producer.publish(message, queue=queue)
            except BaseException as exc:
                errors.append(exc)
                return
            confirmed.append(str(message.task_id))
            time.sleep(0.005)

    def consume_until(done: threading.Event) -> None:
        while not done.is_set() or not set(confirmed) <= received:
            batch = consumer.receive([queue], limit=20, timeout=0.2)
            received.update(str(d.message.task_id) for d in batch)
            consumer.ack_many(batch)

    try:
        producer.declare(queue)
        thread = threading.Thread(target=produce)
        thread.start()
        finished = threading.Event()
        reader = threading.Thread(target=consume_until, args=(finished,))
        reader.start()
        wait_for(lambda: len(confirmed) >= 80, timeout=30, what="first confirms")
        node.stop_app()
        time.sleep(1.0)
        node.start_app()
        thread.join(60)
        finished.set()
        reader.join(60)
    finally:
        producer.close()
        consumer.close()
    assert errors == []
    assert len(confirmed) == total
    assert set(confirmed) <= received


def test_a_delayed_message_survives_a_restart_and_is_never_early(node: Node) -> None:
    queue = unique("eta-outage")
    broker = broker_for(node)
    eta = utcnow() + timedelta(seconds=3)
    message = encode_task(TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[1], eta=eta))
    try:
        broker.publish(message, queue=queue, eta=eta)
        node.stop_app()
        node.start_app()
        got: list[Delivery] = []
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            got = broker.receive([queue], limit=1, timeout=0.2)
        assert got, "the delayed message was lost"
        assert time.time() >= eta.timestamp()
        assert got[0].message.task_id == message.task_id
        broker.ack(got[0])
        assert broker.receive([queue], limit=1, timeout=0.5) == []
    finally:
        broker.close()


def test_confirmed_messages_survive_a_crash_of_the_node(node: Node) -> None:
    queue = unique("crash")
    broker = broker_for(node)
    try:
        broker.publish_many([Outgoing(make_message(n), queue=queue) for n in range(200)])
        # Confirmed persistent messages are on disk: a hard kill keeps them.
        node.kill(signal.SIGKILL)
        node.start()
        assert wait_for(lambda: broker.size(queue) == 200, timeout=30)
        got: list[Delivery] = []
        deadline = time.monotonic() + 20
        while len(got) < 200 and time.monotonic() < deadline:
            batch = broker.receive([queue], limit=50, timeout=0.2)
            got.extend(batch)
            broker.ack_many(batch)
        assert len({d.message.task_id for d in got}) == 200
    finally:
        broker.close()


def test_publishing_during_an_outage_fails_clearly_after_the_retry_time(node: Node) -> None:
    queue = unique("down")
    broker = broker_for(node, publish_retry_timeout=1.0)
    try:
        broker.declare(queue)  # a live pooled connection, about to go stale
        node.stop_app()
        started = time.monotonic()
        # The stale connection takes the message, then dies before confirming: in doubt.
        with pytest.raises(PublishError, match="may or may not have been queued"):
            broker.publish(make_message(1), queue=queue)
        # Nothing can connect at all: the broker is unreachable.
        with pytest.raises(BrokerConnectionError, match="after retrying"):
            broker.publish(make_message(2), queue=queue)
        assert time.monotonic() - started < 10
        node.start_app()
        broker.publish(make_message(3), queue=queue)
        assert broker.size(queue) >= 1
    finally:
        broker.close()


def test_amqps_verifies_the_server_and_carries_tasks(node: Node) -> None:
    queue = unique("tls")
    url = f"amqps://guest:guest@localhost:{node.tls_port}//"
    broker = AMQPBroker(url, transport_options={"ssl": {"ca_certs": str(node.ca_file)}})
    try:
        broker.publish(make_message(1), queue=queue)
        [delivery] = broker.receive([queue], limit=1, timeout=5)
        assert delivery.message.headers["task"] == "tests.echo"
        broker.ack(delivery)
    finally:
        broker.close()


def test_amqps_refuses_a_server_it_cannot_verify_at_once(node: Node) -> None:
    url = f"amqps://guest:guest@localhost:{node.tls_port}//"
    # Without the test CA the certificate does not verify: no retrying, a clear error.
    broker = AMQPBroker(url, transport_options={"publish_retry_timeout": 30})
    try:
        started = time.monotonic()
        with pytest.raises(BrokerConnectionError, match="did not verify"):
            broker.connect()
        assert time.monotonic() - started < 5
    finally:
        broker.close()
    # The host name is checked too: the certificate is not for this name.
    other = AMQPBroker(
        url,
        transport_options={
            "ssl": {"ca_certs": str(node.ca_file), "server_hostname": "rabbit.example"},
            "publish_retry_timeout": 30,
        },
    )
    try:
        with pytest.raises(BrokerConnectionError, match="did not verify"):
            other.connect()
    finally:
        other.close()


def test_a_blocked_connection_makes_publish_fail_clearly(node: Node) -> None:
    queue = unique("blocked")
    broker = broker_for(node, confirm_timeout=2, publish_retry_timeout=3)
    try:
        broker.declare(queue)
        # A memory alarm: RabbitMQ stops reading from publishing connections.
        node.ctl("set_vm_memory_high_watermark", "0.000001")
        started = time.monotonic()
        # A small message sits in the socket buffer: no confirm within confirm_timeout.
        with pytest.raises(PublishError, match=r"did not confirm.*blocked"):
            broker.publish(make_message(0), queue=queue)
        # A large batch cannot even be written: the write times out, and after
        # publish_retry_timeout the batch is reported in doubt, with the reason.
        with pytest.raises(PublishError, match=r"blocked publishing.*may or may not"):
            broker.publish_many([Outgoing(make_message(n), queue=queue) for n in range(3000)])
        assert time.monotonic() - started < 30
    finally:
        node.ctl("set_vm_memory_high_watermark", "0.4")
        broker.close()
    # Once the alarm clears, publishing works again.
    again = broker_for(node)
    try:
        again.publish(make_message(1), queue=queue)
        assert again.size(queue) >= 1
    finally:
        again.close()
