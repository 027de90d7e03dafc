"""RabbitMQ connections made again: failover hosts tried in turn, and the consumer channel
RabbitMQ closes when a delivery outlasts its `consumer_timeout`.

On the private node (one per test run): the tests stop it and change its settings, and
restore them before they end.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import TYPE_CHECKING

import pytest

from celeriac.brokers.amqp.broker import AMQPBroker
from tests.contract.test_brokers import make_message
from tests.helpers import AMQP_URL, require_rabbitmq, require_redis, unique, wait_for
from tests.integration.conftest import import_tasks, write_tasks
from tests.integration.worker_tasks import APP
from tests.private_servers import CTL

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.integration.conftest import RunWorker
    from tests.private_servers import Node

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


class NotRabbitMQ:
    """A loopback port that accepts connections and closes them at once: a host that is
    up but is no RabbitMQ. Counts the connections it saw."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, name="not-rabbitmq", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self.server.close()
        self.thread.join(5)


def quick_options() -> dict[str, float]:
    return {"publish_retry_timeout": 30, "retry_interval_max": 0.5}


def test_failover_hosts_are_tried_in_turn_until_one_answers(node: Node) -> None:
    not_rabbitmq = NotRabbitMQ()
    # A closed port, then a port that is no RabbitMQ, then the node.
    dead = "amqp://guest:guest@127.0.0.1:1//"
    url = f"{dead};amqp://guest:guest@127.0.0.1:{not_rabbitmq.port}//;{node.url}"
    queue = unique("failover")
    producer = AMQPBroker(url, transport_options=quick_options())
    consumer = AMQPBroker(url, transport_options=quick_options())
    sent = make_message(1)
    try:
        producer.publish(sent, queue=queue)
        assert not_rabbitmq.accepted == 1  # the producer went through the second host
        got = wait_for(
            lambda: consumer.receive([queue], limit=1, timeout=0.5), timeout=10, what="delivery"
        )
        [delivery] = got
        assert delivery.message.task_id == sent.task_id
        consumer.ack(delivery)
        assert not_rabbitmq.accepted == 2  # and so did the consumer
    finally:
        with contextlib.suppress(Exception):
            consumer.delete_queue(queue)
        producer.close()
        consumer.close()
        not_rabbitmq.close()


def test_a_consumer_and_a_producer_move_to_the_next_host_when_theirs_goes_away(
    node: Node,
) -> None:
    require_rabbitmq()
    # The private node first, the shared server second.
    url = f"{node.url};{AMQP_URL}"
    queue = unique("failover")
    producer = AMQPBroker(url, transport_options=quick_options())
    consumer = AMQPBroker(url, transport_options=quick_options())
    on_shared = AMQPBroker(AMQP_URL)
    try:
        producer.publish(make_message(1), queue=queue)
        [first] = wait_for(
            lambda: consumer.receive([queue], limit=1, timeout=0.5), timeout=10, what="first"
        )
        consumer.ack(first)
        node.stop_app()
        try:
            # The producer's host is gone: it reconnects to the next one and publishes there.
            moved = make_message(2)
            producer.publish(moved, queue=queue)
            assert on_shared.size(queue) == 1
            # The consumer's connection was closed: it reconnects to the next host too.
            [second] = wait_for(
                lambda: consumer.receive([queue], limit=1, timeout=0.5), timeout=30, what="second"
            )
            assert second.message.task_id == moved.task_id
            consumer.ack(second)
        finally:
            node.start_app()
        assert on_shared.size(queue) == 0
    finally:
        with contextlib.suppress(Exception):
            on_shared.delete_queue(queue)
        for broker in (producer, consumer, on_shared):
            broker.close()


def set_rabbit(node: Node, key: str, value: int) -> None:
    """Change a `rabbit` application setting of the running node (new channels use it)."""
    import subprocess

    subprocess.run(
        [CTL, "-n", node.name, "eval", f"application:set_env(rabbit, {key}, {value})."],
        env=node.env,
        check=True,
        timeout=60,
        capture_output=True,
    )


@pytest.fixture
def short_consumer_timeout(node: Node) -> Iterator[float]:
    """RabbitMQ 3.10 reads `consumer_timeout` when a channel opens, and checks it every
    `channel_tick_interval` (60 s by default): 2 s, checked every 0.5 s, for this test."""
    set_rabbit(node, "consumer_timeout", 2000)
    set_rabbit(node, "channel_tick_interval", 500)
    try:
        yield 2.0
    finally:
        set_rabbit(node, "consumer_timeout", 1_800_000)
        set_rabbit(node, "channel_tick_interval", 60_000)


OUTLAST = (
    """
import os
import time
from pathlib import Path

from celeriac import Celeriac

HERE = Path(__file__).resolve().parent
"""
    + APP
    + """

@app.task(bind=True)
def outlast(self, seconds):
    # The first run holds its delivery for `seconds`; a run again returns at once.
    runs = HERE / "runs.log"
    first = not runs.exists()
    with runs.open("a") as log:
        log.write(f"{os.getpid()}\\n")
    if first:
        time.sleep(seconds)
    return "done"


@app.task
def ping():
    return "pong"
"""
)


def test_a_channel_closed_by_consumer_timeout_is_reopened_and_the_task_is_not_lost(
    node: Node,
    short_consumer_timeout: float,
    tasks_dir: Path,
    run_worker: RunWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redis_url = require_redis()
    name = unique("ctimeout")
    monkeypatch.setenv("TEST_BROKER_URL", node.url)
    monkeypatch.setenv("TEST_BACKEND_URL", redis_url)
    monkeypatch.setenv("TEST_KEY_PREFIX", f"{name}:")
    monkeypatch.setenv("TEST_QUEUE", name)
    monkeypatch.delenv("TEST_DEAD_LETTER_QUEUE", raising=False)
    write_tasks(tasks_dir, OUTLAST)
    tasks = import_tasks(tasks_dir)
    worker = run_worker("-c", "1")
    # Held three times the consumer timeout: RabbitMQ closes the channel meanwhile.
    result = tasks.outlast.delay(3 * short_consumer_timeout)
    wait_for(
        lambda: "not acked within its consumer_timeout" in worker.output(),
        timeout=30,
        what="RabbitMQ closing the channel for the consumer timeout",
    )
    assert result.get(timeout=60) == "done"
    # The worker consumes again on a new channel.
    assert tasks.ping.delay().get(timeout=30) == "pong"
    # RabbitMQ requeued the delivery when it closed the channel; the first run's ack was
    # skipped (that channel is gone), its result was stored, so the redelivered copy is
    # found finished and acked without running: the task ran once.
    runs = (tasks_dir / "runs.log").read_text().split()
    assert len(runs) == 1, worker.output()
    assert "already finished (SUCCESS); dropping a redelivered copy" in worker.output()
    worker.signal(15)
    worker.wait(timeout=30)
    checker = AMQPBroker(node.url)
    try:
        assert checker.size(name) == 0, worker.output()
        checker.delete_queue(name)
    finally:
        checker.close()
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
