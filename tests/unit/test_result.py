"""Reading results: states, values, safe failures, waiting, groups."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from celeriac import AsyncResult, Celeriac, GroupResult, states
from celeriac.backends.base import ResultMeta
from celeriac.exceptions import RemoteTaskError, ResultTimeout, TaskRevokedError
from celeriac.protocol.errors import encode_exception
from celeriac.result import result_from_tuple


def store(app: Celeriac, task_id: str, status: str, value: Any, **extra: Any) -> None:
    app.backend.store(app.backend.ready_meta(task_id, status, value, **extra))


def test_an_unknown_id_is_pending(app: Celeriac) -> None:
    result = app.AsyncResult("nope")
    assert result.state == states.PENDING
    assert result.result is None
    assert not result.ready()


def test_a_success_reads_back_its_value(app: Celeriac) -> None:
    store(app, "ok", states.SUCCESS, {"n": 1})
    result = app.AsyncResult("ok")
    assert result.get(timeout=1) == {"n": 1}
    assert result.successful()
    assert result.date_done is not None


def test_a_failure_is_reraised_as_its_own_class(app: Celeriac) -> None:
    store(app, "bad", states.FAILURE, encode_exception(KeyError("k")), traceback="tb text")
    result = app.AsyncResult("bad")
    with pytest.raises(KeyError):
        result.get(timeout=1)
    assert result.failed()
    assert result.traceback == "tb text"
    assert isinstance(result.get(propagate=False), KeyError)


def test_a_non_exception_class_is_never_rebuilt(app: Celeriac) -> None:
    store(
        app,
        "sneaky",
        states.FAILURE,
        {"exc_type": "system", "exc_module": "os", "exc_message": ["echo pwned"]},
    )
    with pytest.raises(RemoteTaskError) as caught:
        app.AsyncResult("sneaky").get(timeout=1)
    assert caught.value.exc_type == "system"


def test_a_failure_from_an_unimported_module_imports_nothing(app: Celeriac) -> None:
    import sys

    store(
        app,
        "far",
        states.FAILURE,
        {"exc_type": "Boom", "exc_module": "json.tool", "exc_message": ["x"]},
    )
    sys.modules.pop("json.tool", None)
    with pytest.raises(RemoteTaskError, match=r"json\.tool\.Boom: x"):
        app.AsyncResult("far").get(timeout=1)
    assert "json.tool" not in sys.modules


def test_a_revoked_task_raises_task_revoked_error(app: Celeriac) -> None:
    store(app, "gone", states.REVOKED, encode_exception(TaskRevokedError("revoked")))
    with pytest.raises(TaskRevokedError):
        app.AsyncResult("gone").get(timeout=1)


def test_get_times_out_with_celerys_timeout_error(app: Celeriac) -> None:
    with pytest.raises(ResultTimeout):
        app.AsyncResult("never").get(timeout=0.1)


def test_get_wakes_when_the_result_arrives(app: Celeriac) -> None:
    timer = threading.Timer(0.2, store, (app, "later", states.SUCCESS, 5))
    timer.start()
    try:
        assert app.AsyncResult("later").get(timeout=5) == 5
    finally:
        timer.cancel()


def test_get_inside_a_task_is_refused(app: Celeriac, start_worker: Any) -> None:
    @app.task
    def waits_on_another() -> str:
        try:
            app.AsyncResult("x").get(timeout=0.1)
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    start_worker()
    assert "never call result.get() within a task" in waits_on_another.delay().get(timeout=5)


def test_a_chain_result_raises_its_failed_parents_error(app: Celeriac) -> None:
    store(app, "step1", states.FAILURE, encode_exception(ValueError("first")))
    last: AsyncResult[Any] = AsyncResult("step2", app=app, parent=AsyncResult("step1", app=app))
    with pytest.raises(ValueError, match="first"):
        last.get(timeout=0.2)


def test_forget_deletes_the_stored_result(app: Celeriac) -> None:
    store(app, "f", states.SUCCESS, 1)
    result = app.AsyncResult("f")
    result.forget()
    assert app.AsyncResult("f").state == states.PENDING


def test_children_are_rebuilt_from_the_stored_tuples(app: Celeriac) -> None:
    app.backend.store(
        ResultMeta(task_id="p", status=states.SUCCESS, result=1, children=[[["c1", None], None]])
    )
    [child] = app.AsyncResult("p").children
    assert isinstance(child, AsyncResult)
    assert child.id == "c1"


def test_a_group_result_joins_in_call_order(app: Celeriac) -> None:
    for n in range(3):
        store(app, f"m{n}", states.SUCCESS, n * 10)
    group_result = GroupResult("g", [app.AsyncResult(f"m{n}") for n in (2, 0, 1)], app=app)
    assert group_result.get(timeout=1) == [20, 0, 10]
    assert group_result.ready()
    assert group_result.successful()
    assert group_result.completed_count() == 3


def test_a_group_result_propagates_a_member_failure(app: Celeriac) -> None:
    store(app, "a", states.SUCCESS, 1)
    store(app, "b", states.FAILURE, encode_exception(ValueError("member")))
    group_result = GroupResult("g", [app.AsyncResult("a"), app.AsyncResult("b")], app=app)
    assert group_result.failed()
    with pytest.raises(ValueError, match="member"):
        group_result.get(timeout=1)
    assert group_result.join(timeout=1, propagate=False)[0] == 1


def test_a_saved_group_is_restored(app: Celeriac) -> None:
    original = GroupResult("saved", [app.AsyncResult("x"), app.AsyncResult("y")], app=app)
    original.save()
    restored = GroupResult.restore("saved", app=app)
    assert restored is not None
    assert [r.id for r in restored] == ["x", "y"]
    restored.delete()
    assert GroupResult.restore("saved", app=app) is None


def test_as_tuple_round_trips(app: Celeriac) -> None:
    parent = app.AsyncResult("p")
    child: AsyncResult[Any] = AsyncResult("c", app=app, parent=parent)
    rebuilt = result_from_tuple(child.as_tuple(), app=app)
    assert rebuilt.id == "c"
    assert rebuilt.parent.id == "p"
    group_result = GroupResult("g", [child], app=app)
    again = result_from_tuple(group_result.as_tuple(), app=app)
    assert isinstance(again, GroupResult)
    assert [r.id for r in again] == ["c"]


def test_revoke_marks_unfinished_results_revoked(app: Celeriac) -> None:
    store(app, "done", states.SUCCESS, 1)
    group_result = GroupResult("g", [app.AsyncResult("done"), app.AsyncResult("waiting")], app=app)
    group_result.revoke()
    assert app.AsyncResult("done").state == states.SUCCESS
    assert app.AsyncResult("waiting").state == states.REVOKED
