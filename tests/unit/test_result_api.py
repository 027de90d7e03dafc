"""`AsyncResult.get(callback=, on_message=)`, `collect`, `then`, `revoke(signal=)` and
`allow_join_result`, as in Celery."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest

from celeriac.exceptions import IncompleteStream
from celeriac.result import AsyncResult, allow_join_result

if TYPE_CHECKING:
    from celeriac import Celeriac
    from tests.conftest import StartWorker


def test_get_calls_back_with_the_id_and_value(app: Celeriac, start_worker: StartWorker) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    start_worker()
    calls: list[tuple[str, Any]] = []
    result = add.delay(2, 3)
    assert result.get(timeout=10, callback=lambda task_id, value: calls.append((task_id, value)))
    assert calls == [(result.id, 5)]


def test_on_message_sees_progress_states_and_the_final_one(
    app: Celeriac, start_worker: StartWorker
) -> None:
    release = threading.Event()

    @app.task(bind=True)
    def slow(self: Any) -> str:
        self.update_state(state="PROGRESS", meta={"done": 1})
        release.wait(10)
        return "finished"

    start_worker()
    result = slow.delay()
    messages: list[dict[str, Any]] = []

    def on_message(body: dict[str, Any]) -> None:
        messages.append(body)
        if body["status"] == "PROGRESS":
            release.set()

    assert result.get(timeout=10, on_message=on_message, interval=0.05) == "finished"
    statuses = [m["status"] for m in messages]
    assert statuses[0] == "PROGRESS"
    assert statuses[-1] == "SUCCESS"
    assert messages[0]["result"] == {"done": 1}
    assert messages[-1]["task_id"] == result.id


def test_collect_yields_the_result_then_the_tasks_it_sent(
    app: Celeriac, start_worker: StartWorker
) -> None:
    @app.task
    def leaf(x: int) -> int:
        return x * 10

    @app.task
    def parent() -> str:
        leaf.delay(1)
        leaf.delay(2)
        return "parent"

    start_worker()
    result = parent.delay()
    result.get(timeout=10)
    collected = [(getattr(r, "id", None), value) for r, value in result.collect(timeout=10)]
    assert collected[0] == (result.id, "parent")
    assert sorted(value for _, value in collected[1:]) == [10, 20]


def test_collect_of_a_result_not_ready_is_an_incomplete_stream(app: Celeriac) -> None:
    pending: AsyncResult[Any] = AsyncResult("never-sent", app=app)
    stream = pending.collect(timeout=0.01)
    with pytest.raises(Exception):  # noqa: B017 - the first get() times out
        next(stream)
    with pytest.raises(IncompleteStream):
        list(pending._iterdeps(intermediate=False))


def test_then_calls_back_once_the_task_is_done(app: Celeriac, start_worker: StartWorker) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    done = threading.Event()
    got: list[Any] = []
    result = add.delay(1, 1)

    def callback(res: AsyncResult[Any]) -> None:
        got.append(res.get(disable_sync_subtasks=False))
        done.set()

    result.then(callback)
    start_worker()
    assert done.wait(10)
    assert got == [2]


def test_revoke_takes_celerys_signal_and_wait_arguments(app: Celeriac) -> None:
    result: AsyncResult[Any] = AsyncResult("not-started", app=app)
    result.revoke(terminate=True, signal="SIGKILL")
    assert result.state == "REVOKED"
    other: AsyncResult[Any] = AsyncResult("other", app=app)
    other.revoke(terminate=True, signal="SIGTERM", wait=True, timeout=0.1)
    assert other.state == "REVOKED"


def test_get_inside_a_task_is_refused_unless_join_results_are_allowed(
    app: Celeriac, start_worker: StartWorker
) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def waits(allowed: bool) -> Any:
        inner = add.delay(1, 2)
        if allowed:
            with allow_join_result():
                return inner.get(timeout=10)
        return inner.get(timeout=10)

    start_worker(concurrency=2)
    assert waits.delay(True).get(timeout=10) == 3
    with pytest.raises(RuntimeError, match="allow_join_result"):
        waits.delay(False).get(timeout=10)
