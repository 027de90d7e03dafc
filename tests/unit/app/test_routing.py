"""Routing (spec §1.7), with Celery's own router (celery.app.routes) as the oracle for
which queue a name goes to."""

from __future__ import annotations

# Celery (the oracle here) ships no type hints.
# mypy: disable-error-code="no-untyped-call"
import re
import sys
import types
from typing import Any

import pytest
from celery import Celery

from celeriac.app.routing import Route, Router
from celeriac.exceptions import ImproperlyConfigured


def route(routes: Any, name: str = "proj.add", **options: Any) -> Route:
    return Router(routes, default_queue="celery").route(name, (), {}, options)


def celery_queue(routes: Any, name: str) -> str:
    """The queue stock Celery's router picks for `name`."""
    app = Celery("oracle", set_as_current=False)
    app.conf.task_routes = routes
    options = app.amqp.router.route({}, name, (), {})
    queue = options["queue"]
    return queue if isinstance(queue, str) else str(queue.name)


def test_no_routes_goes_to_the_default_queue() -> None:
    assert route(None) == Route(queue="celery", exchange="", routing_key="celery", priority=None)


def test_default_queue_is_configurable() -> None:
    router = Router(None, default_queue="work")
    assert router.route("proj.add", (), {}, {}).queue == "work"


def test_dict_routes_by_exact_name() -> None:
    routes = {"proj.add": {"queue": "math"}, "proj.other": {"queue": "x"}}
    assert route(routes).queue == "math"
    assert route(routes, "proj.sub").queue == "celery"


def test_dict_value_may_be_a_plain_queue_name() -> None:
    assert route({"proj.add": "math"}).queue == "math"


def test_exact_name_wins_over_an_earlier_glob() -> None:
    routes = {"proj.*": {"queue": "glob"}, "proj.add": {"queue": "exact"}}
    assert route(routes).queue == "exact"


def test_glob_routes_every_matching_name() -> None:
    routes = {"feeds.*": {"queue": "feeds"}}
    assert route(routes, "feeds.fetch").queue == "feeds"
    assert route(routes, "feeds.tasks.fetch").queue == "feeds"
    assert route(routes, "web.fetch").queue == "celery"


def test_compiled_regex_routes_matching_names() -> None:
    routes = {re.compile(r"(video|image)\.tasks\..*"): {"queue": "media"}}
    assert route(routes, "video.tasks.encode").queue == "media"
    assert route(routes, "audio.tasks.encode").queue == "celery"


def test_patterns_are_tried_in_order() -> None:
    routes = {"proj.a*": {"queue": "first"}, "proj.*": {"queue": "second"}}
    assert route(routes, "proj.add").queue == "first"
    assert route(routes, "proj.sub").queue == "second"


GLOB_CASES = [
    ("feeds.*", "feeds.fetch"),
    ("feeds.*", "feeds."),
    ("feeds.*", "feeds"),
    ("*.add", "proj.add"),
    ("*.add", "proj.addition"),
    ("*.add", ".add"),
    ("proj?add*", "proj?addx"),
    ("proj?add*", "projXaddx"),
    ("[ab]*", "a.x"),
    ("[ab]*", "[ab]x"),
    ("a*b*c", "aXbYc"),
    ("a*b*c", "abc"),
    ("proj.ad?", "proj.add"),
    ("proj.ad?", "proj.ad?"),
    ("proj.[ab]dd", "proj.add"),
]


@pytest.mark.parametrize(("glob", "name"), GLOB_CASES)
def test_glob_matches_exactly_the_names_celery_matches(glob: str, name: str) -> None:
    routes = {glob: {"queue": "matched"}}
    assert route(routes, name).queue == celery_queue(routes, name)


@pytest.mark.parametrize(
    ("pattern", "name"),
    [(r"proj\.a", "proj.add"), (r"proj\.add$", "proj.add"), (r"add", "proj.add")],
)
def test_regex_matches_exactly_the_names_celery_matches(pattern: str, name: str) -> None:
    routes = {re.compile(pattern): {"queue": "matched"}}
    assert route(routes, name).queue == celery_queue(routes, name)


def test_ordered_list_of_pairs_routes_like_a_dict() -> None:
    routes = [[("feeds.*", {"queue": "feeds"}), (re.compile(r"web\."), "web")]]
    assert route(routes, "feeds.fetch").queue == "feeds"
    assert route(routes, "web.render").queue == "web"
    assert route(routes, "web.render").queue == celery_queue(routes, "web.render")


def test_router_function_with_task_keyword_receives_the_call() -> None:
    seen: list[tuple[Any, ...]] = []

    def router(
        name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any
    ) -> dict[str, str]:
        seen.append((name, args, kwargs, options, task))
        return {"queue": "fn"}

    task = object()
    chosen = Router(router, default_queue="celery").route(
        "proj.add", (1,), {"k": 2}, {"countdown": 5}, task=task
    )
    assert chosen.queue == "fn"
    assert seen == [("proj.add", (1,), {"k": 2}, {"countdown": 5}, task)]


def test_router_function_without_task_keyword_is_called_once() -> None:
    calls: list[str] = []

    def router(name: str, args: Any, kwargs: Any, options: Any) -> str:
        calls.append(name)
        return "fn"

    assert route(router).queue == "fn"
    assert calls == ["proj.add"]


def test_router_function_taking_only_var_keywords_gets_the_task() -> None:
    def router(name: str, *args: Any, **kw: Any) -> str | None:
        return "with-task" if "task" in kw else None

    assert route(router).queue == "with-task"


def test_type_error_inside_a_router_propagates_after_one_call() -> None:
    calls: list[str] = []

    def router(name: str, args: Any, kwargs: Any, options: Any, task: Any = None) -> None:
        calls.append(name)
        raise TypeError("bug inside the router")

    with pytest.raises(TypeError, match="bug inside the router"):
        route(router)
    assert calls == ["proj.add"]


def test_router_returning_none_falls_through_to_the_next() -> None:
    routes = [lambda *a, **k: None, {"proj.add": "second"}]
    assert route(routes).queue == "second"


def test_first_router_with_an_answer_wins() -> None:
    routes = [{"proj.add": "first"}, {"proj.add": "second"}, lambda *a, **k: "third"]
    assert route(routes).queue == "first"


def test_router_returning_an_empty_dict_stops_at_the_default_queue_like_celery() -> None:
    routes = [lambda *a, **k: {}, {"proj.add": "second"}]
    assert route(routes).queue == "celery"
    assert celery_queue(routes, "proj.add") == "celery"


def test_router_returning_a_bad_value_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="a task route must be a queue name"):
        route(lambda *a, **k: 5)


def test_router_given_as_a_dotted_path_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("celeriac_test_routers")
    module.route_task = lambda name, *a, **k: "imported"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert route("celeriac_test_routers.route_task").queue == "imported"
    assert route(["celeriac_test_routers:route_task"]).queue == "imported"


def test_router_path_that_cannot_be_imported_is_refused_naming_it() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"'nonexistent_mod.route', which cannot"):
        Router("nonexistent_mod.route", default_queue="celery")


@pytest.mark.parametrize("routes", [5, [5], {5: "q"}, [[("a",)]]])
def test_malformed_routes_are_refused(routes: Any) -> None:
    with pytest.raises(ImproperlyConfigured):
        Router(routes, default_queue="celery")


# -- options, exchanges, routing keys -------------------------------------------------------


def test_explicit_queue_option_wins_over_routes() -> None:
    assert route(lambda *a, **k: "routed", queue="explicit").queue == "explicit"
    assert route({"proj.add": "routed"}, queue="explicit").queue == "explicit"


def test_direct_queue_goes_to_the_default_exchange_with_the_queue_as_routing_key() -> None:
    chosen = route({"proj.add": {"queue": "math"}})
    assert (chosen.exchange, chosen.routing_key) == ("", "math")


def test_exchange_without_routing_key_still_uses_the_default_exchange() -> None:
    chosen = route({"proj.add": {"queue": "math", "exchange": "tasks"}})
    assert (chosen.exchange, chosen.routing_key) == ("", "math")


def test_routing_key_without_exchange_still_uses_the_default_exchange() -> None:
    chosen = route(None, queue="math", routing_key="rk")
    assert (chosen.exchange, chosen.routing_key) == ("", "math")


def test_named_exchange_and_routing_key_are_kept_when_both_given() -> None:
    chosen = route({"proj.add": {"queue": "math", "exchange": "tasks", "routing_key": "m.add"}})
    assert (chosen.queue, chosen.exchange, chosen.routing_key) == ("math", "tasks", "m.add")


def test_exchange_and_routing_key_options_are_kept_when_both_given() -> None:
    chosen = route(None, queue="q", exchange="ex", routing_key="rk")
    assert (chosen.exchange, chosen.routing_key) == ("ex", "rk")


def test_topic_exchange_keeps_its_exchange_and_falls_back_to_the_queue_as_key() -> None:
    chosen = route({"proj.add": {"queue": "q", "exchange": "ev", "exchange_type": "topic"}})
    assert (chosen.exchange, chosen.routing_key) == ("ev", "q")


def test_topic_exchange_falls_back_to_the_default_routing_key() -> None:
    router = Router(None, default_queue="celery", default_routing_key="task.default")
    chosen = router.route("proj.add", (), {}, {"exchange": "ev", "exchange_type": "topic"})
    assert (chosen.exchange, chosen.routing_key) == ("ev", "task.default")


def test_queue_object_with_a_name_is_read_by_name() -> None:
    class Queue:
        name = "objects"

    chosen = route(None, queue=Queue())
    assert (chosen.queue, chosen.routing_key) == ("objects", "objects")


def test_priority_comes_from_options_then_the_route() -> None:
    routes = {"proj.add": {"queue": "q", "priority": 3}}
    assert route(routes).priority == 3
    assert route(routes, priority=7).priority == 7
    assert route(routes, priority=0).priority == 0


def test_static_routes_are_cached_by_name() -> None:
    router = Router({"proj.*": "glob"}, default_queue="celery")
    first = router.route("proj.add", (), {}, {})
    assert router.route("proj.add", (), {}, {}) == first
    assert router._cache == {"proj.add": {"queue": "glob"}}


def test_router_functions_are_asked_every_time() -> None:
    answers = iter(["a", "b"])
    router = Router(lambda *a, **k: next(answers), default_queue="celery")
    assert [router.route("p", (), {}, {}).queue for _ in range(2)] == ["a", "b"]
