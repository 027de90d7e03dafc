"""Entity layout on RabbitMQ matches stock Celery/kombu: no 406 in either order,
clear errors on real mismatches (spec §4.1, §4.3)."""

from __future__ import annotations

import importlib
import subprocess
from typing import TYPE_CHECKING, Any

import amqp
import pytest

from celeriac.brokers.amqp.broker import AMQPBroker
from celeriac.exceptions import ImproperlyConfigured
from tests.helpers import AMQP_URL, amqp_connection_args, amqp_url, require_rabbitmq, unique

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.rabbitmq, pytest.mark.integration]

# kombu is only partly typed; the tests drive it as stock users do.
_kombu: Any = importlib.import_module("kombu")
Connection, Exchange, Queue = _kombu.Connection, _kombu.Exchange, _kombu.Queue


@pytest.fixture
def queues() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    conn = amqp.Connection(**amqp_connection_args())
    conn.connect()
    channel = conn.channel()
    try:
        for name in names:
            channel.queue_delete(name)
            channel.exchange_delete(name)
    finally:
        conn.close()


def kombu_declare(name: str, **queue_arguments: object) -> None:
    """Declare `name` exactly as a stock Celery app does for a task queue."""
    with Connection(AMQP_URL) as conn:
        queue = Queue(
            name,
            Exchange(name, "direct"),
            routing_key=name,
            queue_arguments=queue_arguments or None,
        )
        queue(conn.default_channel).declare()


def celery_declare(name: str, **conf: object) -> None:
    """Let a stock Celery producer declare its queue (send_task declares it)."""
    import celery

    app = celery.Celery(broker=AMQP_URL, set_as_current=False)
    app.conf.update(conf)
    with app.connection_for_write() as conn:
        queue = app.amqp.queues[name]
        queue(conn.default_channel).declare()


def rabbitmqctl(*args: str) -> list[list[str]]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return [line.split("\t") for line in out.splitlines()[1:] if line.strip()]


def test_a_queue_declared_by_celery_then_by_us_does_not_conflict(queues: list[str]) -> None:
    require_rabbitmq()
    name = unique("lay")
    queues.append(name)
    celery_declare(name)
    broker = AMQPBroker(AMQP_URL)
    try:
        broker.declare(name)
        assert broker.receive([name], limit=1, timeout=0.1) == []
    finally:
        broker.close()


def test_a_queue_declared_by_us_then_by_celery_does_not_conflict(queues: list[str]) -> None:
    require_rabbitmq()
    name = unique("lay")
    queues.append(name)
    broker = AMQPBroker(AMQP_URL)
    try:
        broker.declare(name)
    finally:
        broker.close()
    kombu_declare(name)
    celery_declare(name)


def test_entities_have_celerys_flags(queues: list[str]) -> None:
    require_rabbitmq()
    name = unique("flags")
    queues.append(name)
    broker = AMQPBroker(AMQP_URL)
    try:
        broker.declare(name)
    finally:
        broker.close()
    [queue] = [
        row
        for row in rabbitmqctl(
            "list_queues", "name", "durable", "auto_delete", "exclusive", "arguments"
        )
        if row[0] == name
    ]
    assert queue == [name, "true", "false", "false", "[]"]
    [exchange] = [
        row
        for row in rabbitmqctl("list_exchanges", "name", "type", "durable", "auto_delete")
        if row[0] == name
    ]
    assert exchange == [name, "direct", "true", "false"]
    bindings = [
        row
        for row in rabbitmqctl(
            "list_bindings", "source_name", "destination_name", "destination_kind", "routing_key"
        )
        if row[1] == name
    ]
    assert [name, name, "queue", name] in bindings


def test_priority_queues_match_celerys_max_priority(queues: list[str]) -> None:
    require_rabbitmq()
    name = unique("prio")
    queues.append(name)
    celery_declare(name, task_queue_max_priority=10)
    broker = AMQPBroker(AMQP_URL, transport_options={"max_priority": 10})
    try:
        broker.declare(name)
    finally:
        broker.close()
    per_queue = AMQPBroker(
        AMQP_URL, transport_options={"queue_arguments": {name: {"x-max-priority": 10}}}
    )
    try:
        per_queue.declare(name)
    finally:
        per_queue.close()


def test_a_priority_mismatch_names_the_queue_and_argument(queues: list[str]) -> None:
    require_rabbitmq()
    name = unique("mismatch")
    queues.append(name)
    kombu_declare(name, **{"x-max-priority": 10})
    broker = AMQPBroker(AMQP_URL)  # no max_priority: differs from the existing queue
    try:
        with pytest.raises(ImproperlyConfigured) as excinfo:
            broker.declare(name)
        message = str(excinfo.value)
        assert repr(name) in message
        assert "'x-max-priority'" in message
        # The consumer side says the same instead of looping on channel errors.
        with pytest.raises(ImproperlyConfigured, match="x-max-priority"):
            broker.receive([name], limit=1, timeout=0.5)
        # The broker keeps working for other queues afterwards.
        other = unique("ok")
        queues.append(other)
        broker.declare(other)
    finally:
        broker.close()


def test_an_exchange_of_another_type_is_reported_clearly(queues: list[str]) -> None:
    require_rabbitmq()
    name = unique("extype")
    queues.append(name)
    with Connection(AMQP_URL) as conn:
        Exchange(name, "topic", durable=True)(conn.default_channel).declare()
    broker = AMQPBroker(AMQP_URL)
    try:
        with pytest.raises(ImproperlyConfigured, match=f"exchange '{name}'.*'type'"):
            broker.declare(name)
    finally:
        broker.close()


@pytest.fixture
def vhost() -> Iterator[str]:
    """A throwaway vhost (with a '/' in its name), so that Celery's real default names
    (`celery`) can be used without touching anybody's queues."""
    require_rabbitmq()
    name = f"celeriac/{unique('vh')}"
    user = amqp_connection_args()["userid"]
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, timeout=30)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", name, user, ".*", ".*", ".*"],
        check=True,
        timeout=30,
    )
    try:
        yield name
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], check=True, timeout=30)


def test_celerys_default_queue_exchange_and_routing_key(vhost: str) -> None:
    import celery

    url = amqp_url(virtual_host=vhost)
    app = celery.Celery("defaults", broker=url, set_as_current=False)
    sent = app.send_task("proj.add", args=(1, 2))  # no queue given: Celery's default route
    consumer = AMQPBroker(url)
    try:
        [delivery] = consumer.receive(["celery"], limit=1, timeout=5)
        assert delivery.message.task_id == sent.id
        assert (delivery.exchange, delivery.routing_key) == ("", "celery")
        consumer.ack(delivery)
    finally:
        consumer.close()
    # And ours lands where a stock worker with default settings consumes.
    producer = AMQPBroker(url)
    try:
        producer.publish(delivery.message, queue="celery")
        with Connection(url) as conn:
            got = app.amqp.queues["celery"](conn.default_channel).get(no_ack=True)
        assert got is not None
        assert got.headers["id"] == sent.id
    finally:
        producer.close()
        app.close()
    rows = rabbitmqctl(
        "list_bindings", "-p", vhost, "source_name", "destination_name", "routing_key"
    )
    assert ["celery", "celery", "celery"] in rows
