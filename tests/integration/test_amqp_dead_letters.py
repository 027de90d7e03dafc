"""Dead letters on RabbitMQ: a durable queue, reason/origin/time in headers, listing
that leaves them in place, replay by id, purge."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import amqp
import pytest

from celeriac.brokers.amqp.broker import AMQPBroker
from celeriac.protocol.codec import TaskCall, encode_task
from tests.helpers import AMQP_URL, amqp_connection_args, require_rabbitmq, unique

if TYPE_CHECKING:
    from collections.abc import Iterator

    from celeriac.brokers.base import Delivery

pytestmark = [pytest.mark.rabbitmq, pytest.mark.integration]


@pytest.fixture
def names() -> Iterator[tuple[str, str]]:
    require_rabbitmq()
    queue, dead = unique("work"), unique("dead")
    yield queue, dead
    conn = amqp.Connection(**amqp_connection_args())
    conn.connect()
    channel = conn.channel()
    for name in (queue, dead):
        channel.queue_delete(name)
    channel.exchange_delete(queue)
    conn.close()


@pytest.fixture
def broker(names: tuple[str, str]) -> Iterator[AMQPBroker]:
    made = AMQPBroker(AMQP_URL, transport_options={"dead_letter_queue": names[1]})
    yield made
    made.close()


def deliver(broker: AMQPBroker, queue: str, count: int) -> list[Delivery]:
    for n in range(count):
        call = TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[n], priority=3)
        call.expires = datetime.now(timezone.utc) + timedelta(minutes=5)
        broker.publish(encode_task(call), queue=queue)
    got: list[Delivery] = []
    for _ in range(50):
        got.extend(broker.receive([queue], limit=count - len(got), timeout=0.1))
        if len(got) == count:
            break
    return got


def test_a_dead_letter_carries_reason_origin_and_time_in_headers(
    broker: AMQPBroker, names: tuple[str, str]
) -> None:
    queue, dead = names
    [delivery] = deliver(broker, queue, 1)
    before = datetime.now(timezone.utc)
    broker.dead_letter(delivery, reason="unknown task tests.echo")
    conn = amqp.Connection(**amqp_connection_args())
    conn.connect()
    raw = conn.channel().basic_get(dead, no_ack=False)
    conn.close()  # not acked: it stays
    headers = raw.properties["application_headers"]
    assert headers["celeriac-dead-letter-reason"] == "unknown task tests.echo"
    assert headers["celeriac-dead-letter-queue"] == queue
    assert datetime.fromisoformat(headers["celeriac-dead-letter-time"]) >= before - timedelta(
        seconds=1
    )
    assert headers["id"] == delivery.message.task_id
    assert raw.properties["delivery_mode"] == 2
    # The original's TTL is not carried over; the store's (dead_letter_ttl) is set.
    assert raw.properties["expiration"] == str(14 * 24 * 3600 * 1000)
    # The original was acked: nothing comes back to the work queue.
    assert broker.receive([queue], limit=1, timeout=0.3) == []


def test_listing_leaves_dead_letters_in_place_and_in_order(
    broker: AMQPBroker, names: tuple[str, str]
) -> None:
    queue, _ = names
    for n, delivery in enumerate(deliver(broker, queue, 4)):
        broker.dead_letter(delivery, reason=f"bad {n}")
    first = broker.list_dead_letters()
    assert [d.reason for d in first] == ["bad 0", "bad 1", "bad 2", "bad 3"]
    assert broker.list_dead_letters(limit=2) == first[:2]
    assert broker.list_dead_letters() == first
    assert all(d.queue == queue for d in first)
    assert first[0].message.properties["priority"] == 3
    assert "celeriac-dead-letter-reason" not in first[0].message.headers


def test_replay_by_id_sends_the_original_back_and_removes_only_that_one(
    broker: AMQPBroker, names: tuple[str, str]
) -> None:
    queue, _ = names
    deliveries = deliver(broker, queue, 3)
    for delivery in deliveries:
        broker.dead_letter(delivery, reason="boom")
    listed = broker.list_dead_letters()
    assert broker.replay_dead_letter(listed[1].id)
    [back] = broker.receive([queue], limit=1, timeout=2)
    assert back.message.task_id == deliveries[1].message.task_id
    assert back.message.body == deliveries[1].message.body
    assert back.message.headers == deliveries[1].message.headers
    assert (back.exchange, back.routing_key) == ("", queue)
    broker.ack(back)
    assert [d.id for d in broker.list_dead_letters()] == [listed[0].id, listed[2].id]
    assert not broker.replay_dead_letter(listed[1].id)
    assert not broker.replay_dead_letter("no-such-id")
    assert len(broker.list_dead_letters()) == 2


def test_purge_empties_the_dead_letter_queue(broker: AMQPBroker, names: tuple[str, str]) -> None:
    queue, _ = names
    for delivery in deliver(broker, queue, 3):
        broker.dead_letter(delivery, reason="x")
    assert broker.purge_dead_letters() == 3
    assert broker.list_dead_letters() == []
    assert broker.stats().dead_lettered == 3


def test_the_dead_letter_queue_is_durable_and_named_by_the_option(
    broker: AMQPBroker, names: tuple[str, str]
) -> None:
    _, dead = names
    assert broker.list_dead_letters() == []
    conn = amqp.Connection(**amqp_connection_args())
    conn.connect()
    channel = conn.channel()
    # Re-declaring with the same flags succeeds only if they match (durable, classic).
    channel.queue_declare(dead, durable=True, exclusive=False, auto_delete=False)
    conn.close()
    default = AMQPBroker(AMQP_URL)
    try:
        assert default.dead_letter_queue == "celeriac.dead_letter"
    finally:
        default.close()
