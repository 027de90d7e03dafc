"""How `@app.task` and `@shared_task` make a task: its name and class (`task_cls`, or its
async variant), the checks of its options, annotations, and registration in the app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac._imports import import_object
from celeriac.app.annotations import annotate
from celeriac.app.task import AsyncTask, Task
from celeriac.app.task_options import check_custom_attributes
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Callable

    from celeriac.app.base import Celeriac

__all__ = ["async_variant", "create_task", "task_class"]


def create_task(
    app: Celeriac, fun: Callable[..., Any], *, shared: bool = False, **options: Any
) -> Task[Any, Any]:
    """A task of `app` made from `fun` with `@task` options, checked and registered."""
    name = options.pop("name", None) or app.gen_task_name(fun)
    base: type[Task[Any, Any]] = options.pop("base", None) or app._task_class(
        is_async=_is_coroutine_function(fun)
    )
    bind = bool(options.pop("bind", False))
    check_custom_attributes(name, options)
    if options.get("rate_limit") is not None:
        from celeriac.app.ratelimit import parse_rate

        parse_rate(options["rate_limit"])
    soft, hard = options.get("soft_time_limit"), options.get("time_limit")
    if soft is not None and hard is not None and soft > hard:
        raise ImproperlyConfigured(
            f"{name}: soft_time_limit ({soft}) must not exceed time_limit ({hard})"
        )
    if "typing" not in options and not app.strict_typing:
        options["typing"] = False
    task = base(fun, app=None if shared else app, name=name, bind=bind, **options)
    if app.conf.task_annotations is not None:
        annotate(task, app.conf.task_annotations)
    app.tasks.register(task)
    return task


def task_class(app: Celeriac, *, is_async: bool) -> type[Task[Any, Any]]:
    """The class of a new task: `task_cls` when set (Flask's `FlaskTask` pattern),
    else `Task` (`AsyncTask` for an `async def` function)."""
    chosen: type[Task[Any, Any]] | str | None = app.conf.task_cls
    if chosen is None:
        return AsyncTask if is_async else Task
    if isinstance(chosen, str):
        app.conf.task_cls = import_object(chosen)  # validated now that it is imported
        chosen = app.conf.task_cls
    assert isinstance(chosen, type)
    assert issubclass(chosen, Task)
    if is_async and not issubclass(chosen, AsyncTask):
        return async_variant(chosen)
    return chosen


_ASYNC_VARIANTS: dict[type[Task[Any, Any]], type[Task[Any, Any]]] = {}


def async_variant(cls: type[Task[Any, Any]]) -> type[Task[Any, Any]]:
    """`task_cls` for an `async def` function: the class with `AsyncTask`'s behaviour (its
    hooks and attributes kept; a custom `__call__` wraps the creation of the coroutine)."""
    variant = _ASYNC_VARIANTS.get(cls)
    if variant is None:
        variant = type(cls.__name__, (cls, AsyncTask), {"__module__": cls.__module__})
        _ASYNC_VARIANTS[cls] = variant
    return variant


def _is_coroutine_function(fun: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fun)
