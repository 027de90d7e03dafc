"""The running request: `Context`, the current request, and the retry it builds."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from celeriac._time import utcnow
from celeriac.app.context import (
    Context,
    current_request,
    current_task,
    pop_context,
    push_context,
    run_in_context,
)
from celeriac.exceptions import Retry
from celeriac.protocol.codec import decode_task
from celeriac.testing import memory_app

ACCEPT = frozenset({"application/json"})
LINK: dict[str, Any] = {
    "task": "t.after",
    "args": [],
    "kwargs": {},
    "options": {},
    "subtask_type": None,
}


def worker_request(**fields: Any) -> Context:
    base: dict[str, Any] = {
        "id": "the-id",
        "task": "t.job",
        "args": [1],
        "kwargs": {"k": 2},
        "retries": 2,
        "called_directly": False,
        "parent_id": "the-parent",
        "root_id": "the-root",
        "group": "the-group",
        "group_index": 3,
        "chord": {"task": "t.body"},
        "chain": [{"task": "t.next"}],
        "callbacks": [LINK],
        "errbacks": [LINK],
        "reply_to": "the-reply-queue",
        "shadow": "the-shadow",
        "timelimit": (30.0, 20.0),
        "ignore_result": True,
        "headers": {"tenant": "acme"},
        "stamps": {"s": ["v"]},
        "stamped_headers": ["s"],
        "replaced_task_nesting": 1,
        "priority": 4,
        "queue": "jobs",
        "origin": "worker@there",
        "expires": "2999-01-01T00:00:00+00:00",
    }
    base.update(fields)
    return Context(**base)


def test_retried_carries_the_requests_message_fields_with_one_more_retry() -> None:
    request = worker_request()
    eta = utcnow() + timedelta(seconds=5)
    call = request.retried("t.job", [9], {"k": 8}, eta=eta)
    assert (call.name, call.id, call.args, call.kwargs) == ("t.job", "the-id", [9], {"k": 8})
    assert call.retries == 3
    assert call.eta == eta
    assert (call.parent_id, call.root_id) == ("the-parent", "the-root")
    assert (call.group, call.group_index) == ("the-group", 3)
    assert call.chord == {"task": "t.body"}
    assert call.chain == [{"task": "t.next"}]
    assert call.callbacks == [LINK]
    assert call.errbacks == [LINK]
    assert call.reply_to == "the-reply-queue"
    assert call.shadow == "the-shadow"
    assert (call.time_limit, call.soft_time_limit) == (30.0, 20.0)
    assert call.ignore_result is True
    assert call.headers == {"tenant": "acme"}
    assert call.stamps == {"s": ["v"]}
    assert call.stamped_headers == ["s"]
    assert call.priority == 4
    # What a producer writes afresh is not carried over.
    assert call.origin is None
    assert call.expires is None
    assert call.replaced_task_nesting == 0
    # Copies, not the request's own containers.
    assert call.headers is not request.headers
    assert call.callbacks is not None
    assert call.callbacks[0] is not LINK


def test_a_top_level_retry_names_its_own_request_as_parent_as_celery_does() -> None:
    call = worker_request(parent_id=None, root_id=None).retried("t.job", [], {}, eta=None)
    assert (call.parent_id, call.root_id) == ("the-id", "the-id")


@pytest.mark.parametrize(
    ("queue", "delivery", "expected"),
    [
        ("jobs", {"routing_key": "other", "exchange": ""}, "jobs"),
        (None, {"routing_key": "by-key", "exchange": ""}, "by-key"),
        (None, {"routing_key": "by-key", "exchange": "topics"}, None),
    ],
)
def test_the_origin_queue_is_the_queue_taken_from_else_a_default_exchange_key(
    queue: str | None, delivery: dict[str, Any], expected: str | None
) -> None:
    assert worker_request(queue=queue, delivery_info=delivery).origin_queue == expected


def test_a_worker_retry_goes_back_to_its_queue_with_every_field() -> None:
    app = memory_app()

    @app.task(bind=True)
    def job(self: Any, x: int, k: int = 0) -> None:
        raise self.retry(countdown=0.05)

    request = worker_request(task=job.name)
    before = utcnow()
    with pytest.raises(Retry):
        run_in_context(job, request, lambda: job.run(1, k=2))
    [delivery] = app.broker.receive(["jobs"], limit=1, timeout=2)
    call = decode_task(delivery.message, accept=ACCEPT)
    assert (call.id, call.retries, call.args, call.kwargs) == ("the-id", 3, [1], {"k": 2})
    assert call.eta is not None
    assert call.eta - before >= timedelta(seconds=0.05)
    assert (call.parent_id, call.root_id, call.group, call.group_index) == (
        "the-parent",
        "the-root",
        "the-group",
        3,
    )
    assert (call.chord, call.chain, call.callbacks, call.errbacks) == (
        {"task": "t.body"},
        [{"task": "t.next"}],
        [LINK],
        [LINK],
    )
    assert delivery.message.properties["reply_to"] == "the-reply-queue"
    assert delivery.message.properties["priority"] == 4
    assert delivery.message.headers["timelimit"] == [30.0, 20.0]
    assert (call.shadow, call.ignore_result, call.headers) == (
        "the-shadow",
        True,
        {"tenant": "acme"},
    )
    assert (call.stamps, call.stamped_headers) == ({"s": ["v"]}, ["s"])
    # add_to_parent is off: the retry is not a child of the request it retries.
    assert request.children == []


def test_retry_options_override_the_carried_fields() -> None:
    app = memory_app()

    @app.task(bind=True)
    def job(self: Any) -> None:
        raise self.retry(countdown=0, queue="elsewhere", priority=9, headers={"h": 1})

    with pytest.raises(Retry):
        run_in_context(job, worker_request(task=job.name, args=[], kwargs={}), job.run)
    [delivery] = app.broker.receive(["elsewhere"], limit=1, timeout=2)
    call = decode_task(delivery.message, accept=ACCEPT)
    assert (call.id, call.retries, call.headers) == ("the-id", 3, {"h": 1})
    assert delivery.message.properties["priority"] == 9


def test_push_and_pop_set_the_current_request_and_task() -> None:
    app = memory_app()

    @app.task
    def job() -> None:
        pass

    request = Context(id="x")
    assert current_request() is None
    token = push_context(job, request)
    try:
        assert current_request() is request
        assert current_task() is job
        assert job.request is request
    finally:
        pop_context(token)
    assert current_request() is None
    assert current_task() is None
