"""Pick the queue for a task call: explicit options, then `task_routes`, then the default.

`task_routes` takes Celery's forms: a dict keyed by task name, glob (`"feeds.*"`) or
compiled regex, whose values are `{"queue": ...}` dicts or plain queue names; the same
table as a list of `(key, route)` pairs (ordered); a router function
`(name, args, kwargs, options, task=None, **kw) -> dict | str | None` or the dotted path of
one; or a list of these, tried in order.

Celery compat: as in Celery 5.7, a key is a glob only when it holds `*` (a glob matches the
whole name), and a compiled regex matches at the start of the name (`re.match`).
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

from celeriac._imports import import_object
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.queues import QueueSpec

__all__ = ["Route", "Router"]

Routes = Any  # dict / callable / str path / list of those, as Celery accepts


@final
@dataclass(frozen=True, slots=True)
class Route:
    """Where one message goes."""

    queue: str
    exchange: str
    routing_key: str
    priority: int | None


def _as_route_dict(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {"queue": value}
    if isinstance(value, Mapping):
        return dict(value)
    raise ImproperlyConfigured(
        f"a task route must be a queue name or a dict like {{'queue': 'q'}}, got {value!r}"
    )


class Router:
    """Resolves routes from `task_routes` with the default queue as fallback."""

    def __init__(
        self,
        routes: Routes,
        *,
        default_queue: str,
        default_exchange: str | None = None,
        default_routing_key: str | None = None,
        queues: Mapping[str, QueueSpec] | None = None,
    ) -> None:
        self.default_queue = default_queue
        # `task_queues`: a call routed to one of these goes to its exchange and key.
        self.queues = dict(queues or {})
        self.default_exchange = default_exchange
        self.default_routing_key = default_routing_key
        self._routers = self._compile(routes)
        self._cache: dict[str, dict[str, Any] | None] = {}

    @staticmethod
    def _compile(routes: Routes) -> list[Callable[..., Any]]:
        if routes is None:
            return []
        items: Sequence[Any] = routes if isinstance(routes, list | tuple) else [routes]
        compiled: list[Callable[..., Any]] = []
        for item in items:
            if isinstance(item, str):
                try:
                    item = import_object(item)
                except ImportError as exc:
                    raise ImproperlyConfigured(
                        f"task_routes names router {item!r}, which cannot be imported: {exc}"
                    ) from exc
            if isinstance(item, Mapping):
                compiled.append(_MapRouter(item.items()))
            elif isinstance(item, list | tuple):
                compiled.append(_MapRouter(item))
            elif callable(item):
                compiled.append(_FunctionRouter(item))
            else:
                raise ImproperlyConfigured(f"cannot route with {item!r}")
        return compiled

    def route(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: Mapping[str, Any],
        *,
        task: Any = None,
    ) -> Route:
        """The route of one call; explicit `queue`/`routing_key`/`exchange` options win.

        Celery compat: a direct queue (the default exchange type) without both an explicit
        exchange and routing key is published to the default exchange `""` with the queue
        name as routing key; any other exchange type keeps its exchange, with the routing
        key falling back to `task_default_routing_key`, then the queue name.
        """
        chosen: dict[str, Any] = {}
        if options.get("queue") is None and self._routers:
            found = self._lookup(name, args, kwargs, options, task)
            if found:
                chosen = found
        queue = options.get("queue") or chosen.get("queue") or self.default_queue
        if not isinstance(queue, str):
            queue = getattr(queue, "name", None) or str(queue)
        spec = self.queues.get(queue)
        exchange = options.get("exchange") or chosen.get("exchange") or ""
        if not isinstance(exchange, str):
            exchange = getattr(exchange, "name", "") or ""
        routing_key = options.get("routing_key") or chosen.get("routing_key")
        exchange_type = options.get("exchange_type") or chosen.get("exchange_type")
        if spec is not None and spec.exchange and not exchange:
            # Celery compat: a queue from task_queues brings its exchange and key.
            exchange, exchange_type = spec.exchange, spec.exchange_type
            routing_key = routing_key or spec.routing_key
        exchange_type = exchange_type or "direct"
        if exchange_type == "direct":
            if not exchange or not routing_key:
                exchange, routing_key = "", queue
        else:
            exchange = exchange or self.default_exchange or queue
            routing_key = routing_key or self.default_routing_key or queue
        priority = options.get("priority")
        if priority is None:
            priority = chosen.get("priority")
        return Route(queue=queue, exchange=exchange, routing_key=routing_key, priority=priority)

    def _lookup(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: Mapping[str, Any],
        task: Any,
    ) -> dict[str, Any] | None:
        static = all(isinstance(r, _MapRouter) for r in self._routers)
        if static and name in self._cache:
            return self._cache[name]
        result: dict[str, Any] | None = None
        for router in self._routers:
            result = _as_route_dict(router(name, args, kwargs, options, task=task))
            # Celery compat: the first router that answers anything but None decides,
            # even with an empty dict (which means "the default queue").
            if result is not None:
                break
        if static:
            self._cache[name] = result
        return result


class _FunctionRouter:
    """A user's router function; `task=` is passed only if it takes it (Celery always does)."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        # Decided once, from the signature: retrying a call on TypeError would run the
        # router twice and hide a TypeError raised inside it.
        self.takes_task = _accepts_keyword(function, "task")

    def __call__(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: Mapping[str, Any],
        *,
        task: Any = None,
    ) -> Any:
        if self.takes_task:
            return self.function(name, args, kwargs, options, task=task)
        return self.function(name, args, kwargs, options)


def _accepts_keyword(function: Callable[..., Any], keyword: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature (some builtins): pass it, as Celery does
        return True
    return any(
        p.kind is p.VAR_KEYWORD
        or (p.name == keyword and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        for p in parameters
    )


class _MapRouter:
    """A table of name / glob / regex → route; exact names first, then patterns in order."""

    def __init__(self, table: Iterable[Any]) -> None:
        self.exact: dict[str, Any] = {}
        self.patterns: list[tuple[re.Pattern[str], Any]] = []
        for pair in table:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ImproperlyConfigured(
                    f"task_routes entry {pair!r} is not a (name or pattern, route) pair"
                )
            key, value = pair
            if isinstance(key, re.Pattern):
                self.patterns.append((key, value))
            elif isinstance(key, str) and "*" in key:
                # Celery compat: only a key with `*` is a glob (then `?` and `[...]` are
                # wildcards too); any other key is an exact name.
                self.patterns.append((re.compile(fnmatch.translate(key)), value))
            elif isinstance(key, str):
                self.exact[key] = value
            else:
                raise ImproperlyConfigured(f"task_routes key {key!r} is not a name or pattern")

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in self.exact:
            return self.exact[name]
        for pattern, value in self.patterns:
            if pattern.match(name):
                return value
        return None
