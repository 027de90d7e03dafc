"""`task_cls` (the class of every task an app makes) and `set_default()`."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from celeriac import AsyncTask, Celeriac, Task, current_app
from celeriac.exceptions import ImproperlyConfigured
from celeriac.testing import memory_app


class Audited(Task[Any, Any]):
    """Wraps each run, as Flask's FlaskTask wraps it in an app context."""

    calls: list[str] = []  # noqa: RUF012 - shared on purpose: the test reads it

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        Audited.calls.append(self.name)
        return self.run(*args, **kwargs)


def test_tasks_are_made_of_task_cls() -> None:
    app = memory_app(task_cls=Audited)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert isinstance(add, Audited)


def test_task_cls_may_be_named_by_path() -> None:
    app = memory_app(task_cls=f"{__name__}:Audited")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert isinstance(add, Audited)


def test_an_explicit_base_wins_over_task_cls() -> None:
    app = memory_app(task_cls=Audited)

    @app.task(base=Task)
    def add(x: int, y: int) -> int:
        return x + y

    assert type(add) is Task


def test_async_functions_get_an_async_variant_of_task_cls() -> None:
    app = memory_app(task_cls=Audited)

    @app.task
    async def fetch() -> int:
        return 1

    assert isinstance(fetch, Audited)
    assert isinstance(fetch, AsyncTask)


def test_a_worker_runs_the_body_through_a_custom_call(start_worker: Any) -> None:
    app = memory_app(task_cls=Audited)

    @app.task
    def audited_add(x: int, y: int) -> int:
        return x + y

    Audited.calls.clear()
    start_worker(app)
    assert audited_add.delay(2, 3).get(timeout=10) == 5
    assert Audited.calls == [audited_add.name]


def test_task_cls_must_be_a_task_class() -> None:
    with pytest.raises(ImproperlyConfigured, match="task_cls"):
        Celeriac("x", task_cls=dict)


def test_set_default_makes_the_app_current_apps_fallback() -> None:
    app = Celeriac("quiet", broker="memory://quiet", set_as_current=False)
    app.set_default()
    seen: list[Celeriac] = []
    # A new thread has no current app of its own: it falls back to the default.
    thread = threading.Thread(target=lambda: seen.append(current_app()))
    thread.start()
    thread.join()
    assert seen == [app]


def test_function_tasks_still_work_after_a_class_based_one() -> None:
    # `app.Task` once cached itself under the name of the method that picks a task's
    # class, so every `@app.task` after a class-based task raised TypeError.
    app = memory_app()

    class Multiply(app.Task):  # type: ignore[name-defined,misc]
        name = "tests.multiply"

        def run(self, x: int, y: int) -> int:
            return x * y

    multiply = app.register_task(Multiply())

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add(2, 2) == 4
    assert multiply(6, 7) == 42
    assert app.Task is app.Task  # still made once
