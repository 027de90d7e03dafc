"""The send path: what `send_task` and `apply_async` publish, routing, ETAs, size
limits, batching."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from celeriac._time import utcnow
from celeriac.brokers.memory import MemoryBroker
from celeriac.exceptions import MessageTooLarge
from celeriac.protocol.codec import decode_task
from celeriac.testing import memory_app

if TYPE_CHECKING:
    from celeriac import Celeriac

ACCEPT = frozenset({"application/json"})


def sent(app: Celeriac, queue: str = "celery") -> Any:
    [delivery] = app.broker.receive([queue], limit=1, timeout=1)
    return delivery


def test_send_task_publishes_a_protocol_v2_message() -> None:
    app = memory_app()
    result = app.send_task("remote.add", args=(2, 3), kwargs={"z": 1})
    delivery = sent(app)
    headers = delivery.message.headers
    assert headers["task"] == "remote.add"
    assert headers["id"] == result.id
    assert headers["root_id"] == result.id
    assert headers["lang"] == "py"
    call = decode_task(delivery.message, accept=ACCEPT)
    assert (call.args, call.kwargs) == ([2, 3], {"z": 1})
    assert delivery.message.properties["reply_to"] == app.thread_oid


def test_apply_async_options_reach_the_message() -> None:
    app = memory_app()

    @app.task
    def job(x: int) -> int:
        return x

    @app.task
    def after(x: int) -> None:
        pass

    before = utcnow()
    job.apply_async(
        (1,),
        countdown=0.01,
        expires=60,
        priority=7,
        queue="jobs",
        link=after.s(),
        link_error=after.si(0),
        headers={"tenant": "acme"},
        ignore_result=True,
        time_limit=30,
        soft_time_limit=20,
        task_id="fixed-id",
        shadow="job-shadow",
    )
    delivery = wait_delivery(app, "jobs")
    message = delivery.message
    call = decode_task(message, accept=ACCEPT)
    assert call.id == "fixed-id"
    assert call.eta is not None
    assert call.eta >= before
    assert call.expires is not None
    assert call.expires - before > timedelta(seconds=59)
    assert message.properties["priority"] == 7
    assert int(message.properties["expiration"]) > 58000
    assert call.callbacks == [dict(after.s())]
    assert call.errbacks is not None
    assert call.errbacks[0]["immutable"] is True
    assert call.headers == {"tenant": "acme"}
    assert call.ignore_result is True
    assert (call.time_limit, call.soft_time_limit) == (30, 20)
    assert message.headers["shadow"] == "job-shadow"
    assert message.headers["timelimit"] == [30, 20]


def wait_delivery(app: Celeriac, queue: str) -> Any:
    deliveries = app.broker.receive([queue], limit=1, timeout=2)
    assert deliveries, f"nothing arrived in {queue}"
    return deliveries[0]


def test_task_routes_pick_the_queue() -> None:
    app = memory_app(task_routes={"tests.mail.*": {"queue": "mail"}})

    @app.task(name="tests.mail.send")
    def send() -> None:
        pass

    send.delay()
    assert app.broker.size("mail") == 1
    assert app.broker.size("celery") == 0


def test_countdown_puts_the_message_in_the_delayed_store() -> None:
    app = memory_app()

    @app.task
    def later() -> None:
        pass

    later.apply_async(countdown=60)
    assert app.broker.receive(["celery"], limit=1, timeout=0.1) == []
    assert app.broker.size("celery") == 1


def test_an_aware_eta_in_another_timezone_is_kept_as_the_same_instant() -> None:
    app = memory_app()

    @app.task
    def at() -> None:
        pass

    eta = datetime.now(timezone(timedelta(hours=5))) + timedelta(milliseconds=1)
    at.apply_async(eta=eta)
    call = decode_task(wait_delivery(app, "celery").message, accept=ACCEPT)
    assert call.eta == eta


def test_an_oversized_message_is_refused_before_sending() -> None:
    app = memory_app(task_max_message_size=100)

    @app.task
    def big(data: str) -> None:
        pass

    with pytest.raises(MessageTooLarge, match="task_max_message_size"):
        big.delay("x" * 1000)
    assert app.broker.size("celery") == 0


def test_a_group_is_published_in_one_batch() -> None:
    from celeriac import group

    app = memory_app()

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    calls: list[int] = []
    original = broker.publish_many

    def counting(items: Any) -> None:
        calls.append(len(items))
        original(items)

    broker.publish_many = counting  # type: ignore[method-assign]
    group(add.s(i, i) for i in range(10))()
    assert calls == [10]
    assert broker.size("celery") == 10


def test_a_body_that_compresses_well_is_still_refused_when_too_large() -> None:
    # Workers check the size after decompression too: the producer must not send it.
    app = memory_app(task_max_message_size=1000, task_compression="zlib")

    @app.task
    def big(data: str) -> None:
        pass

    with pytest.raises(MessageTooLarge):
        big.delay("x" * 100_000)
    assert app.broker.size("celery") == 0
