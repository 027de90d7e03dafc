"""Celery's built-in tasks as a stock client sends them (by name), run by a worker thread.

`celery.map`, `celery.starmap`, `celery.chunks`, `celery.accumulate`, and
`celery.chord_unlock`, which a stock client sends for a chord when its result backend
cannot join natively (celeriac's own chords never send it).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from celeriac import group, states
from celeriac.exceptions import ChordError
from celeriac.result import result_from_tuple
from tests.helpers import wait_for

if TYPE_CHECKING:
    from celeriac import Celeriac
    from tests.conftest import StartWorker

TIMEOUT = 5.0


@pytest.fixture
def tasks(app: Celeriac, start_worker: StartWorker) -> Any:
    errors: list[tuple[Any, BaseException, Any]] = []

    @app.task(name="tests.add")
    def add(x: int, y: int = 1) -> int:
        return x + y

    @app.task(name="tests.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="tests.fail")
    def fail(x: int) -> None:
        raise ValueError(f"boom {x}")

    @app.task(name="tests.on_error")
    def on_error(request: Any, exc: BaseException, traceback: Any) -> None:
        errors.append((request, exc, traceback))

    start_worker()

    class Tasks:
        pass

    namespace = Tasks()
    vars(namespace).update(add=add, tsum=tsum, fail=fail, on_error=on_error, errors=errors)
    return namespace


def test_map_and_starmap_sent_by_name(app: Celeriac, tasks: Any) -> None:
    task = dict(tasks.add.s())
    mapped = app.send_task("celery.map", kwargs={"task": task, "it": [1, 2, 3]})
    starred = app.send_task("celery.starmap", kwargs={"task": task, "it": [[1, 2], [3, 4]]})
    assert mapped.get(timeout=TIMEOUT) == [2, 3, 4]
    assert starred.get(timeout=TIMEOUT) == [3, 7]


def test_chunks_sent_by_name_start_a_group_of_starmaps(app: Celeriac, tasks: Any) -> None:
    sent = app.send_task(
        "celery.chunks",
        kwargs={"task": dict(tasks.add.s()), "it": [[1, 1], [2, 2], [3, 3]], "n": 2},
    )
    children = result_from_tuple(sent.get(timeout=TIMEOUT), app=app)
    assert children.get(timeout=TIMEOUT) == [[2, 4], [6]]


def test_accumulate_returns_its_arguments_or_one_of_them(app: Celeriac, tasks: Any) -> None:
    assert app.send_task("celery.accumulate", (1, 2, 3)).get(timeout=TIMEOUT) == [1, 2, 3]
    indexed = app.send_task("celery.accumulate", (1, 2, 3), {"index": 1})
    assert indexed.get(timeout=TIMEOUT) == 2


def frozen_body(tasks: Any) -> dict[str, Any]:
    body = tasks.tsum.s()
    body.freeze()
    return dict(body)


def test_chord_unlock_calls_the_body_once_the_header_is_ready(app: Celeriac, tasks: Any) -> None:
    header = group(tasks.add.s(i, i) for i in range(3))()
    header.get(timeout=TIMEOUT)
    body = frozen_body(tasks)
    app.send_task(
        "celery.chord_unlock",
        (header.id, body),
        {"result": [r.as_tuple() for r in header.results]},
    )
    assert app.AsyncResult(body["options"]["task_id"]).get(timeout=TIMEOUT) == 6


def test_chord_unlock_checks_again_after_a_second_by_default(app: Celeriac, tasks: Any) -> None:
    # The header waits on a queue nobody consumes, so the first check finds it pending.
    header = group(tasks.add.s(1, 1)).apply_async(queue="held")
    published: list[dict[str, Any]] = []
    broker = app.broker
    original = broker.publish

    def recording(message: Any, **options: Any) -> None:
        published.append({"headers": message.headers, **options})
        original(message, **options)

    broker.publish = recording  # type: ignore[method-assign]
    app.send_task(
        "celery.chord_unlock",
        (header.id, frozen_body(tasks)),
        {"result": [r.as_tuple() for r in header.results], "interval": None},
    )
    [retry] = wait_for(
        lambda: [p for p in published if p["headers"]["retries"] == 1], timeout=TIMEOUT
    )
    eta = retry["eta"]
    assert isinstance(eta, datetime)
    delay = (eta - app.now()).total_seconds()
    assert 0.0 < delay <= 1.0  # Celery's result_chord_retry_interval, not a task default


def test_chord_unlock_fails_the_body_and_calls_its_errbacks_when_a_member_failed(
    app: Celeriac, tasks: Any
) -> None:
    header = group(tasks.add.s(1, 1), tasks.fail.s(2))()
    header.join(timeout=TIMEOUT, propagate=False)
    body_sig = tasks.tsum.s().on_error(tasks.on_error.s())
    body_sig.freeze()
    app.send_task(
        "celery.chord_unlock",
        (header.id, dict(body_sig)),
        {"result": [r.as_tuple() for r in header.results]},
    )
    body = app.AsyncResult(body_sig.id)
    with pytest.raises(ChordError, match=r"boom 2"):
        body.get(timeout=TIMEOUT)
    assert body.state == states.FAILURE
    [(request, exc, _)] = wait_for(lambda: tasks.errors, timeout=TIMEOUT)
    assert request.id == body_sig.id
    assert isinstance(exc, ChordError)
