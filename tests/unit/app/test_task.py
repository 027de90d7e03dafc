"""Tasks: calling directly, argument checks, eager mode, retry semantics, backoff."""

from __future__ import annotations

from typing import Any

import pytest

from celeriac import Celeriac, states
from celeriac.app.retry_policy import backoff_countdown
from celeriac.exceptions import MaxRetriesExceededError, Retry
from celeriac.result import EagerResult
from celeriac.testing import memory_app


def test_calling_a_task_runs_it_here(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add(2, 3) == 5
    assert app.broker.size("celery") == 0


def test_a_direct_call_sees_a_called_directly_request(app: Celeriac) -> None:
    @app.task(bind=True)
    def who(self: Any) -> bool:
        return bool(self.request.called_directly)

    assert who() is True


def test_delay_checks_arguments_against_the_signature(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match="bad arguments"):
        add.delay(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        add.apply_async((1, 2, 3))
    assert app.broker.size("celery") == 0


def test_typing_false_skips_the_argument_check(app: Celeriac) -> None:
    @app.task(typing=False)
    def loose(x: int) -> int:
        return x

    loose.apply_async((1, 2, 3))
    assert app.broker.size("celery") == 1


def test_bound_tasks_check_arguments_without_self(app: Celeriac) -> None:
    @app.task(bind=True)
    def bound(self: Any, x: int) -> int:
        return x

    bound.delay(1)
    with pytest.raises(TypeError):
        bound.delay()


def test_apply_runs_eagerly_and_returns_an_eager_result(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.apply((1, 2))
    assert isinstance(result, EagerResult)
    assert result.get() == 3
    assert result.state == states.SUCCESS


def test_always_eager_runs_delay_in_process() -> None:
    app = memory_app(task_always_eager=True)

    @app.task(bind=True)
    def context(self: Any) -> list[Any]:
        return [self.request.is_eager, self.request.called_directly]

    assert context.delay().get() == [True, False]
    assert app.broker.size("celery") == 0


def test_eager_failure_is_kept_unless_propagating() -> None:
    app = memory_app(task_always_eager=True)

    @app.task
    def fail() -> None:
        raise KeyError("k")

    result = fail.delay()
    assert result.state == states.FAILURE
    assert isinstance(result.result, KeyError)
    with pytest.raises(KeyError):
        result.get()
    app.conf.task_eager_propagates = True
    with pytest.raises(KeyError):
        fail.delay()


def test_eager_retries_run_inline_until_they_succeed() -> None:
    app = memory_app(task_always_eager=True)
    seen: list[int] = []

    @app.task(bind=True, max_retries=5)
    def flaky(self: Any) -> int:
        seen.append(self.request.retries)
        if len(seen) < 3:
            raise self.retry(countdown=100)
        return len(seen)

    assert flaky.delay().get() == 3
    assert seen == [0, 1, 2]


def test_retry_over_the_limit_reraises_the_given_exception() -> None:
    app = memory_app(task_always_eager=True)

    @app.task(bind=True, max_retries=2)
    def always(self: Any) -> None:
        raise self.retry(exc=ValueError("still failing"))

    result = always.delay()
    assert result.state == states.FAILURE
    assert isinstance(result.result, ValueError)


def test_retry_over_the_limit_without_exc_raises_max_retries_exceeded() -> None:
    app = memory_app(task_always_eager=True)

    @app.task(bind=True, max_retries=1)
    def always(self: Any, n: int) -> None:
        raise self.retry()

    result = always.delay(7)
    assert isinstance(result.result, MaxRetriesExceededError)
    assert result.result.task_args == [7]


def test_retry_with_throw_false_returns_the_retry(app: Celeriac) -> None:
    app.conf.task_always_eager = True
    outcomes: list[Any] = []

    @app.task(bind=True, max_retries=1)
    def soft(self: Any) -> str:
        if self.request.retries == 0:
            outcomes.append(self.retry(throw=False))
        return "done"

    assert soft.delay().get() == "done"
    assert isinstance(outcomes[0], Retry)


def test_retry_outside_a_task_run_reraises_exc(app: Celeriac) -> None:
    @app.task(bind=True)
    def direct(self: Any) -> None:
        raise self.retry(exc=OSError("direct"))

    with pytest.raises(OSError, match="direct"):
        direct()


def test_autoretry_retries_listed_exceptions_eagerly() -> None:
    app = memory_app(task_always_eager=True)
    attempts: list[int] = []

    @app.task(autoretry_for=(ConnectionError,), max_retries=3)
    def unstable() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("down")
        return "up"

    assert unstable.delay().get() == "up"
    assert len(attempts) == 3


def test_autoretry_does_not_retry_other_exceptions() -> None:
    app = memory_app(task_always_eager=True)
    attempts: list[int] = []

    @app.task(autoretry_for=(ConnectionError,), max_retries=3)
    def broken() -> None:
        attempts.append(1)
        raise ValueError("a bug, not a glitch")

    assert broken.delay().state == states.FAILURE
    assert attempts == [1]


@pytest.mark.parametrize(("retries", "cap"), [(0, 1.0), (3, 8.0), (20, 600.0)])
def test_backoff_without_jitter_doubles_up_to_the_cap(retries: int, cap: float) -> None:
    assert backoff_countdown(1.0, retries, 600.0, full_jitter=False) == cap


def test_backoff_with_full_jitter_stays_within_the_countdown() -> None:
    values = [backoff_countdown(2.0, 4, 600.0, full_jitter=True) for _ in range(200)]
    assert all(0 <= v <= 32.0 for v in values)
    assert len(set(values)) > 100


def test_eager_link_and_link_error_are_applied() -> None:
    app = memory_app(task_always_eager=True)
    seen: list[Any] = []

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def remember(value: Any) -> None:
        seen.append(value)

    @app.task
    def fail() -> None:
        raise RuntimeError("x")

    add.apply_async((1, 2), link=remember.s())
    failed = fail.apply_async(link_error=remember.s())
    assert seen == [3, failed.id]


def test_update_state_stores_a_custom_state(app: Celeriac) -> None:
    @app.task(bind=True)
    def progress(self: Any) -> None:
        self.update_state(task_id="job-1", state="PROGRESS", meta={"done": 50})

    progress()
    result = app.AsyncResult("job-1")
    assert result.state == "PROGRESS"
    assert result.info == {"done": 50}
