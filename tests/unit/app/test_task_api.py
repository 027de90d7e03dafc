"""The rest of Celery's task API, each row as Celery behaves: custom task attributes,
pydantic arguments, class-based tasks, `Task.replace`, `einfo`, the `current_app` and
`current_task` proxies. Tasks run on worker threads over the memory broker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from celeriac import Celeriac, chain, current_app, current_task, group
from celeriac.einfo import ExceptionInfo
from celeriac.exceptions import ImproperlyConfigured, RemoteTaskError
from celeriac.signals import task_failure

if TYPE_CHECKING:
    from tests.conftest import StartWorker


class Order(BaseModel):
    id: int
    total: float


class Receipt(BaseModel):
    order_id: int
    paid: float


# -- custom attributes and options ------------------------------------------------------


def test_an_unknown_task_option_becomes_an_attribute_as_in_celery(app: Celeriac) -> None:
    # Custom attributes are outside the typed options: typed code passes them as **kwargs.
    decorate: Any = app.task
    job = decorate(owner="team-a", reject_on_worker_lost=True)(lambda: None)
    assert job.owner == "team-a"
    assert job.reject_on_worker_lost is True


def test_an_option_close_to_a_known_one_is_refused_as_a_typo(app: Celeriac) -> None:
    decorate: Any = app.task
    with pytest.raises(ImproperlyConfigured, match="did you mean 'max_retries'"):
        decorate(max_retires=3)(lambda: None)


# -- pydantic=True ---------------------------------------------------------------------


def test_pydantic_validates_model_arguments_and_dumps_a_model_result(
    app: Celeriac, start_worker: StartWorker
) -> None:
    seen: list[Any] = []

    @app.task(pydantic=True)
    def charge(order: Order) -> Receipt:
        seen.append(order)
        return Receipt(order_id=order.id, paid=order.total)

    start_worker()
    # A model argument is sent as a dict and rebuilt in the worker; a plain dict too.
    first: Any = charge.delay(Order(id=1, total=9.5)).get(timeout=10)
    assert first == {"order_id": 1, "paid": 9.5}
    second: Any = charge.apply_async(({"id": 2, "total": "3"},)).get(timeout=10)
    assert second == {"order_id": 2, "paid": 3.0}
    assert seen == [Order(id=1, total=9.5), Order(id=2, total=3.0)]


def test_pydantic_refuses_an_argument_that_does_not_validate(
    app: Celeriac, start_worker: StartWorker
) -> None:
    @app.task(pydantic=True)
    def charge(order: Order) -> None: ...

    start_worker()
    # pydantic's ValidationError cannot be rebuilt from its message: it comes back as a
    # RemoteTaskError naming it.
    with pytest.raises(RemoteTaskError, match="ValidationError"):
        charge.apply_async(({"id": "not a number", "total": 1},)).get(timeout=10)


# -- class-based tasks -------------------------------------------------------------------


def test_a_class_based_task_registered_with_the_app_runs_on_a_worker(
    app: Celeriac, start_worker: StartWorker
) -> None:
    class Multiply(app.Task):  # type: ignore[name-defined,misc]
        name = "tests.multiply"

        def run(self, x: int, y: int) -> int:
            return x * y

    task = app.register_task(Multiply())
    assert app.tasks["tests.multiply"] is task
    assert task.app is app
    start_worker()
    assert task.delay(6, 7).get(timeout=10) == 42
    assert task(2, 3) == 6


def test_a_class_based_task_without_a_name_is_named_after_its_class(app: Celeriac) -> None:
    class Ping(app.Task):  # type: ignore[name-defined,misc]
        def run(self) -> str:
            return "pong"

    task = app.register_task(Ping)
    assert task.name == f"{__name__}.Ping"
    assert task() == "pong"


# -- Task.replace --------------------------------------------------------------------------


def test_replace_hands_the_id_and_the_rest_of_the_chain_to_the_new_signature(
    app: Celeriac, start_worker: StartWorker
) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def double(x: int) -> int:
        return x * 2

    @app.task(bind=True)
    def later(self: Any, x: int) -> Any:
        return self.replace(add.s(x, 10))

    start_worker()
    replaced = later.delay(1)
    assert replaced.get(timeout=10) == 11  # the replacement's value, under the same id
    assert chain(later.s(1), double.s()).delay().get(timeout=10) == 22


def test_replace_with_a_group_gathers_its_values(app: Celeriac, start_worker: StartWorker) -> None:
    @app.task
    def square(x: int) -> int:
        return x * x

    @app.task(bind=True)
    def fan_out(self: Any, n: int) -> Any:
        return self.replace(group(square.s(i) for i in range(n)))

    start_worker()
    assert fan_out.delay(4).get(timeout=10) == [0, 1, 4, 9]


def test_replace_runs_the_new_signature_inline_when_eager(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True)
    def later(self: Any, x: int) -> Any:
        return self.replace(add.s(x, 10))

    assert later.apply((5,)).get() == 15


# -- einfo -------------------------------------------------------------------------------


def test_on_failure_and_task_failure_get_an_exception_info(
    app: Celeriac, start_worker: StartWorker
) -> None:
    got: dict[str, Any] = {}

    class Base(app.Task):  # type: ignore[name-defined,misc]
        def on_failure(self, exc: Any, task_id: Any, args: Any, kwargs: Any, einfo: Any) -> None:
            got["hook"] = einfo

    @app.task(base=Base)
    def boom() -> None:
        raise KeyError("missing")

    def receiver(einfo: Any, **kwargs: Any) -> None:
        got["signal"] = einfo

    task_failure.connect(receiver, weak=False)
    try:
        start_worker()
        with pytest.raises(KeyError):
            boom.delay().get(timeout=10)
    finally:
        task_failure.disconnect(receiver)
    einfo = got["hook"]
    assert isinstance(einfo, ExceptionInfo)
    assert isinstance(einfo.exception, KeyError)
    assert einfo.type is KeyError
    assert einfo.tb is not None
    assert "KeyError: 'missing'" in einfo.traceback
    assert str(einfo) == einfo.traceback
    assert isinstance(got["signal"], ExceptionInfo)


# -- current_app and current_task ------------------------------------------------------


def test_current_app_is_a_proxy_of_the_app_in_use(app: Celeriac) -> None:
    other = Celeriac("other", broker="memory://", task_default_queue="elsewhere")
    assert current_app.conf.task_default_queue == "elsewhere"
    assert current_app() is other
    assert current_app.main == "other"
    del app


def test_current_task_is_the_running_task_and_falsy_outside(
    app: Celeriac, start_worker: StartWorker
) -> None:
    @app.task
    def who() -> list[Any]:
        return [current_task.name, current_task.request.id]

    assert not current_task
    start_worker()
    result = who.delay()
    assert result.get(timeout=10) == [who.name, result.id]
