"""`task_queues` read from kombu's own Queue/Exchange objects (kombu is only a test
dependency here: celeriac reads their attributes)."""

from __future__ import annotations

from typing import Any

import kombu.entity
import pytest

from celeriac import Celeriac
from celeriac.app.queues import QueueSpec, parse_queues
from celeriac.exceptions import ImproperlyConfigured
from celeriac.worker.options import WorkerOptions

# kombu is untyped: its classes are used as plain callables here.
Queue: Any = kombu.entity.Queue
Exchange: Any = kombu.entity.Exchange


def make_app(**settings: Any) -> Celeriac:
    return Celeriac("t", broker="memory://", set_as_current=False, **settings)


def test_kombu_queues_become_specs() -> None:
    specs = parse_queues(
        [
            Queue("default"),
            Queue("videos", Exchange("media", type="topic"), routing_key="media.video"),
            Queue("urgent", queue_arguments={"x-max-priority": 10}),
            Queue("feeds", Exchange("feeds")),
        ]
    )
    assert specs["default"] == QueueSpec("default")
    assert specs["videos"] == QueueSpec("videos", "media", "topic", "media.video")
    assert specs["urgent"].arguments == {"x-max-priority": 10}
    # Celery compat: a queue's binding key defaults to its name.
    assert specs["feeds"].routing_key == "feeds"


def test_celerys_dict_form_is_read() -> None:
    specs = parse_queues({"videos": {"exchange": "media", "routing_key": "media.video"}})
    assert specs["videos"] == QueueSpec("videos", "media", "direct", "media.video")


def test_kombu_max_priority_becomes_the_queue_argument() -> None:
    assert parse_queues([Queue("p", max_priority=5)])["p"].arguments == {"x-max-priority": 5}


@pytest.mark.parametrize(
    ("queue", "problem"),
    [
        (Queue("q", durable=False), "durable=False"),
        (Queue("q", exclusive=True), "exclusive=True"),
        (Queue("q", auto_delete=True), "auto_delete=True"),
        (Queue("q", Exchange("h", type="headers")), "exchange type 'headers'"),
        ("q", "expected a kombu-style Queue"),
    ],
)
def test_a_queue_celeriac_cannot_declare_as_asked_is_refused(queue: Any, problem: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=f"task_queues entry .*{problem}"):
        make_app(task_queues=[queue])


def test_a_queue_listed_twice_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="listed twice"):
        parse_queues([Queue("a"), Queue("a")])


def test_a_worker_without_q_consumes_every_listed_queue() -> None:
    app = make_app(task_queues=[Queue("a"), Queue("b")])
    assert WorkerOptions.resolve(app).queues == ("a", "b")
    assert WorkerOptions.resolve(app, queues="b").queues == ("b",)


def test_a_worker_without_task_queues_consumes_the_default_queue() -> None:
    assert WorkerOptions.resolve(make_app()).queues == ("celery",)


def test_an_unlisted_queue_is_refused_when_missing_queues_are_not_created() -> None:
    app = make_app(task_queues=[Queue("a")], task_create_missing_queues=False)
    with pytest.raises(ImproperlyConfigured, match="queue\\(s\\) other not in task_queues"):
        WorkerOptions.resolve(app, queues="other")


def test_a_call_routed_to_a_listed_queue_goes_to_its_exchange_and_key() -> None:
    app = make_app(
        task_queues=[Queue("videos", Exchange("media", type="topic"), routing_key="media.#")],
        task_routes={"tasks.encode": {"queue": "videos", "routing_key": "media.video"}},
    )
    route = app.router.route("tasks.encode", [], {}, {})
    assert (route.queue, route.exchange, route.routing_key) == ("videos", "media", "media.video")
    plain = app.router.route("tasks.other", [], {}, {"queue": "videos"})
    assert (plain.exchange, plain.routing_key) == ("media", "media.#")


def test_queue_arguments_and_exchange_types_reach_the_broker_options() -> None:
    app = make_app(
        task_queues=[
            Queue("videos", Exchange("media", type="topic"), routing_key="media.#"),
            Queue("urgent", queue_arguments={"x-max-priority": 10}),
        ],
        broker_transport_options={"queue_arguments": {"other": {"x-max-priority": 3}}},
    )
    options = app.broker_transport_options()
    assert options["exchange_types"] == {"media": "topic"}
    assert options["queue_arguments"] == {
        "urgent": {"x-max-priority": 10},
        "other": {"x-max-priority": 3},
    }
