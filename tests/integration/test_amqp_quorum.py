"""Quorum queues on RabbitMQ (Celery 5.5's `task_default_queue_type = "quorum"`): the
queue is declared as one, tasks run from it, and a message returned more often than its
delivery limit is moved to the dead-letter queue by RabbitMQ, with the reason."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import amqp
import pytest
import redis

from celeriac import Celeriac
from celeriac.brokers.amqp.broker import AMQPBroker
from celeriac.exceptions import ImproperlyConfigured
from celeriac.protocol.codec import TaskCall, encode_task
from celeriac.testing import start_worker
from tests.helpers import (
    AMQP_URL,
    amqp_connection_args,
    require_rabbitmq,
    require_redis,
    unique,
    wait_for,
)
from tests.integration.interop_redis import stock_worker

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.rabbitmq, pytest.mark.integration]


@pytest.fixture
def names() -> Iterator[tuple[str, str]]:
    require_rabbitmq()
    queue, dead = unique("quorum"), unique("dead")
    yield queue, dead
    conn = amqp.Connection(**amqp_connection_args())
    conn.connect()
    channel = conn.channel()
    for name in (queue, dead):
        channel.queue_delete(name)
    channel.exchange_delete(queue)
    conn.close()


def test_the_default_queue_is_a_quorum_queue_and_runs_tasks(names: tuple[str, str]) -> None:
    queue, dead = names
    app = Celeriac(
        "quorum",
        broker=AMQP_URL,
        backend="memory://quorum",
        task_default_queue=queue,
        task_default_queue_type="quorum",
        broker_transport_options={"dead_letter_queue": dead},
    )

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    try:
        with start_worker(app, queues=[queue]):
            assert add.delay(20, 22).get(timeout=20) == 42
    finally:
        app.close()
    # RabbitMQ refuses to see it as a plain classic queue.
    classic = AMQPBroker(AMQP_URL)
    try:
        with pytest.raises(ImproperlyConfigured, match="already exists on RabbitMQ"):
            classic.declare(queue)
    finally:
        classic.close()
    # ... and declaring it with the quorum arguments but a classic type fails on the type.
    quorum = AMQPBroker(
        AMQP_URL, transport_options={"queue_type": "quorum", "dead_letter_queue": dead}
    )
    arguments = {**(quorum.queue_arguments(queue) or {}), "x-queue-type": "classic"}
    quorum.close()
    mismatched = AMQPBroker(AMQP_URL, transport_options={"queue_arguments": {queue: arguments}})
    try:
        with pytest.raises(ImproperlyConfigured, match="x-queue-type"):
            mismatched.declare(queue)
    finally:
        mismatched.close()


def test_a_message_over_its_delivery_limit_is_dead_lettered_by_rabbitmq(
    names: tuple[str, str],
) -> None:
    queue, dead = names
    broker = AMQPBroker(
        AMQP_URL,
        transport_options={"queue_type": "quorum", "delivery_limit": 2, "dead_letter_queue": dead},
    )
    try:
        task_id = str(uuid.uuid4())
        broker.publish(encode_task(TaskCall(name="tests.echo", id=task_id, args=[1])), queue=queue)
        deliveries = 0
        # Each return (a consumer that died, a reject with requeue) counts.
        for _ in range(200):
            got = broker.receive([queue], limit=1, timeout=0.2)
            for delivery in got:
                deliveries += 1
                broker.reject(delivery, requeue=True)
            if deliveries and not got and broker.size(queue) == 0:
                break
        assert deliveries == 3  # the first delivery and two returns

        [letter] = wait_for(broker.list_dead_letters, timeout=10, what="the dead letter")
        assert letter.message.task_id == task_id
        assert "delivery_limit" in letter.reason
        assert letter.queue == queue
    finally:
        broker.close()


def test_quorum_on_a_redis_broker_is_refused() -> None:
    app = Celeriac("quorum", broker="redis://127.0.0.1:6379/0", task_default_queue_type="quorum")
    with pytest.raises(ImproperlyConfigured, match="RabbitMQ settings"):
        app.create_broker()


STOCK = """
import celery

app = celery.Celery("stockq", broker={broker!r}, backend={backend!r}, set_as_current=False)
app.conf.update(
    task_default_queue={queue!r},
    task_default_queue_type="quorum",
    result_backend_transport_options={{"global_keyprefix": {prefix!r}}},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="quorum.mul")
def mul(x, y):
    return x * y
"""


@pytest.mark.slow
def test_a_stock_worker_shares_the_quorum_queue_declared_as_celery_declares_it(
    names: tuple[str, str], tmp_path: Path
) -> None:
    queue, dead = names
    backend = require_redis()
    prefix = unique("quorum") + ":"
    (tmp_path / "stockq.py").write_text(
        STOCK.format(broker=AMQP_URL, backend=backend, queue=queue, prefix=prefix)
    )
    app = Celeriac(
        "quorum",
        broker=AMQP_URL,
        backend=backend,
        task_default_queue=queue,
        task_default_queue_type="quorum",
        broker_transport_options={"dead_letter_queue": dead, "delivery_limit": None},
        result_backend_transport_options={"global_keyprefix": prefix},
    )
    try:
        app.broker.declare(queue)  # celeriac first, then the stock worker declares it too
        with stock_worker(tmp_path, "stockq", "-P", "solo", "-Q", queue) as worker:
            assert app.send_task("quorum.mul", (6, 7)).get(timeout=30) == 42, worker.tail()
            worker.assert_healthy()
    finally:
        app.close()
        client = redis.Redis.from_url(backend)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
