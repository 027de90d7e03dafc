"""`shared_task`: a task defined for every app, those that exist and those made later
(Celery's `shared_task`, for reusable apps and libraries that do not know the app)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from celeriac.app import base

if sys.version_info >= (3, 11):
    from typing import ParamSpec, Unpack
else:  # pragma: no cover
    from typing_extensions import ParamSpec, Unpack

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from celeriac.app.task import AsyncTask, Task
    from celeriac.app.task_options import BoundTaskDecorator, TaskDecorator, TaskOptions

__all__ = ["shared_task"]

P = ParamSpec("P")
R = TypeVar("R")


@overload
def shared_task(fun: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...


@overload
def shared_task(fun: Callable[P, R], /) -> Task[P, R]: ...


@overload
def shared_task(*, bind: Literal[True], **options: Unpack[TaskOptions]) -> BoundTaskDecorator: ...


@overload
def shared_task(
    *, bind: Literal[False] = False, **options: Unpack[TaskOptions]
) -> TaskDecorator: ...


def shared_task(*args: Any, **options: Any) -> Any:
    """Define a task usable by every app (Celery's `shared_task`)."""

    def create(fun: Callable[..., Any]) -> Task[Any, Any]:
        base._shared_tasks.append((fun, options))
        # Every app gets the task; the caller gets the current app's (as Celery's proxy
        # resolves to), not whichever app the set happened to yield last.
        current = base._current_app.get() or base._default_app
        created: Task[Any, Any] | None = None
        for app in list(base._all_apps):
            task = app._create_task(fun, shared=True, **dict(options))
            if created is None or app is current:
                created = task
        if created is None:
            created = base.current_app()._create_task(fun, shared=True, **dict(options))
        return created

    if len(args) == 1 and callable(args[0]) and not options:
        return create(args[0])
    return create
