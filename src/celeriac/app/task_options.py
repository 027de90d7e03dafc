"""The options of `@app.task(...)` and `@shared_task(...)`: their names and types, the
check of custom attributes, and the types of the decorators they make."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar, overload

from celeriac.exceptions import ImproperlyConfigured

if sys.version_info >= (3, 11):
    from typing import ParamSpec
else:  # pragma: no cover
    from typing_extensions import ParamSpec

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping
    from datetime import datetime

    from celeriac.app.task import AsyncTask, Task

__all__ = ["BoundTaskDecorator", "TaskDecorator", "TaskOptions", "check_custom_attributes"]

P = ParamSpec("P")
R = TypeVar("R")


class TaskOptions(TypedDict, total=False):
    """Options accepted by `@app.task(...)` (Celery's names)."""

    name: str
    base: type[Task[Any, Any]]
    typing: bool
    ignore_result: bool
    store_errors_even_if_ignored: bool
    rate_limit: str | float | None
    max_retries: int | None
    default_retry_delay: float
    autoretry_for: tuple[type[BaseException], ...]
    dont_autoretry_for: tuple[type[BaseException], ...]
    retry_kwargs: dict[str, Any]
    retry_backoff: bool | float
    retry_backoff_max: float
    retry_jitter: bool
    acks_late: bool
    acks_on_failure_or_timeout: bool
    reject_on_worker_lost: bool | None
    time_limit: float | None
    soft_time_limit: float | None
    expires: float | datetime | None
    priority: int | None
    queue: str | None
    routing_key: str | None
    exchange: str | None
    serializer: str | None
    compression: str | None
    track_started: bool
    throws: tuple[type[BaseException], ...]
    trail: bool
    send_events: bool
    pydantic: bool
    pydantic_strict: bool
    pydantic_context: dict[str, Any] | None
    pydantic_dump_kwargs: dict[str, Any] | None


def check_custom_attributes(name: str, options: Mapping[str, Any]) -> None:
    """Options of `@task(...)` that are not Celery's become task attributes (as in
    Celery), unless they look like a misspelt option.

    Raises:
        ImproperlyConfigured: an option close to a known one (e.g. `max_retires`).
    """
    import difflib

    known = sorted(TaskOptions.__annotations__)
    for key in options:
        if key in TaskOptions.__annotations__:
            continue
        if key.startswith("_"):
            raise ImproperlyConfigured(
                f"@task option {key!r} for {name}: names must not start with _"
            )
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if close:
            raise ImproperlyConfigured(
                f"@task got unknown option {key!r} for {name}: did you mean {close[0]!r}? "
                "(a custom attribute needs a name that is not close to a task option)"
            )


class TaskDecorator(Protocol):
    @overload
    def __call__(self, fun: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...

    @overload
    def __call__(self, fun: Callable[P, R], /) -> Task[P, R]: ...


class BoundTaskDecorator(Protocol):
    @overload
    def __call__(self, fun: Callable[..., Coroutine[Any, Any, R]], /) -> AsyncTask[..., R]: ...

    @overload
    def __call__(self, fun: Callable[..., R], /) -> Task[..., R]: ...
