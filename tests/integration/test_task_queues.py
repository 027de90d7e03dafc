"""`task_queues` with kombu Queue/Exchange objects, on a real RabbitMQ and a real worker:
the worker declares the exchange (with its type), the queue and the binding at start,
consumes every listed queue without `-Q`, and a task routed to a queue reaches it through
that queue's exchange."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import amqp
import pytest

from tests.helpers import amqp_connection_args, require_rabbitmq, require_redis, unique
from tests.integration.conftest import import_tasks, write_tasks

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.integration.conftest import RunWorker

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

SOURCE = """
from kombu import Exchange, Queue

from celeriac import Celeriac

app = Celeriac(
    "tasks",
    broker={broker!r},
    backend={backend!r},
    result_backend_transport_options={{"global_keyprefix": {prefix!r}}},
    task_queues=[
        Queue({plain!r}),
        Queue({videos!r}, Exchange({exchange!r}, type="topic"), routing_key="media.#"),
    ],
    task_routes={{"tasks.encode": {{"queue": {videos!r}, "routing_key": "media.video"}}}},
)


@app.task(bind=True)
def encode(self, name):
    info = self.request.delivery_info
    return [name, info.get("exchange"), info.get("routing_key")]


@app.task
def add(x, y):
    return x + y
"""


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    found = {"plain": unique("tq-p"), "videos": unique("tq-v"), "exchange": unique("tq-x")}
    yield found
    connection = amqp.Connection(**amqp_connection_args())
    connection.connect()
    try:
        channel = connection.channel()
        for queue in (found["plain"], found["videos"]):
            with contextlib.suppress(Exception):
                channel.queue_delete(queue)
            with contextlib.suppress(Exception):
                channel.exchange_delete(queue)
        with contextlib.suppress(Exception):
            channel.exchange_delete(found["exchange"])
    finally:
        connection.close()
    import redis

    client = redis.Redis.from_url(require_redis())
    try:
        keys = list(client.scan_iter(match=f"{found['plain']}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def test_a_worker_declares_and_consumes_kombu_style_queues(
    names: dict[str, str], tasks_dir: Path, run_worker: RunWorker
) -> None:
    broker = require_rabbitmq()
    backend = require_redis()
    write_tasks(
        tasks_dir,
        SOURCE.format(broker=broker, backend=backend, prefix=f"{names['plain']}:", **names),
    )
    tasks = import_tasks(tasks_dir)
    worker = run_worker("-P", "solo")  # no -Q: every queue of task_queues
    assert names["plain"] in worker.output()
    assert names["videos"] in worker.output()

    # The exchange exists with the type task_queues gave it (a passive declare of
    # another type would fail with 406).
    connection = amqp.Connection(**amqp_connection_args())
    connection.connect()
    try:
        connection.channel().exchange_declare(names["exchange"], "topic", passive=True)
    finally:
        connection.close()

    encoded = tasks.encode.delay("clip").get(timeout=20)
    assert encoded == ["clip", names["exchange"], "media.video"]
    assert tasks.add.apply_async((2, 3), queue=names["plain"]).get(timeout=20) == 5
    tasks.app.close()


def test_stock_celery_declares_the_same_queues_and_its_messages_reach_the_worker(
    names: dict[str, str], tasks_dir: Path, run_worker: RunWorker
) -> None:
    import celery
    import kombu.entity

    # kombu is untyped: its classes are used as plain callables here.
    Queue: Any = kombu.entity.Queue
    Exchange: Any = kombu.entity.Exchange

    broker = require_rabbitmq()
    backend = require_redis()
    prefix = f"{names['plain']}:"
    write_tasks(tasks_dir, SOURCE.format(broker=broker, backend=backend, prefix=prefix, **names))
    tasks = import_tasks(tasks_dir)
    run_worker("-P", "solo")

    stock = celery.Celery("stock", broker=broker, backend=backend)
    stock.conf.update(
        task_queues=[
            Queue(names["plain"]),
            Queue(
                names["videos"], Exchange(names["exchange"], type="topic"), routing_key="media.#"
            ),
        ],
        result_backend_transport_options={"global_keyprefix": prefix},
        broker_connection_retry_on_startup=True,
    )
    try:
        with stock.connection_for_write() as connection:
            channel = connection.default_channel
            # What celeriac declared is what kombu declares: a different exchange type
            # or queue argument would make RabbitMQ refuse these (406) and close the channel.
            for queue in stock.amqp.queues.values():
                queue(channel).declare()
        sent = stock.send_task(
            "tasks.encode", ("stock",), queue=names["videos"], routing_key="media.video"
        )
        encoded = tasks.app.AsyncResult(sent.id).get(timeout=20)
        assert encoded == ["stock", names["exchange"], "media.video"]
    finally:
        stock.close()
        tasks.app.close()
