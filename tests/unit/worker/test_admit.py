"""Admission verdicts, from plain messages: no broker, no worker thread."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from celeriac import Celeriac, states
from celeriac._time import utcnow
from celeriac.brokers.base import Delivery
from celeriac.exceptions import NotRegistered, WorkerLostError
from celeriac.protocol.codec import TaskCall, encode_task
from celeriac.protocol.message import Message
from celeriac.worker.admit import (
    Admission,
    DeadLetter,
    Defer,
    Expired,
    Finished,
    Revoked,
    Run,
    Undecodable,
)
from celeriac.worker.revocations import Revocations


@pytest.fixture
def admission(app: Celeriac) -> Admission:
    @app.task(name="tests.add")
    def add(x: int, y: int) -> int:
        return x + y

    return Admission(app, Revocations(app.backend), broker_counts_crashes=True)


def delivery(message: Message, **options: Any) -> Delivery:
    return Delivery(message=message, queue="celery", tag=uuid.uuid4().hex, **options)


def add_call(**options: Any) -> TaskCall:
    options.setdefault("args", [1, 2])
    return TaskCall(name="tests.add", id=str(uuid.uuid4()), **options)


def test_a_good_message_runs(app: Celeriac, admission: Admission) -> None:
    call = add_call()
    verdict = admission.check(delivery(encode_task(call)))
    assert isinstance(verdict, Run)
    assert verdict.call.id == call.id
    assert verdict.task is app.tasks["tests.add"]


def test_a_body_that_is_not_json_is_undecodable(admission: Admission) -> None:
    bad = Message(headers={"task": "tests.add", "id": "x"}, body=b"{not json")
    verdict = admission.check(delivery(bad))
    assert isinstance(verdict, Undecodable)
    assert type(verdict.exc).__name__ == "SerializationError"


def test_a_refused_content_type_is_undecodable(admission: Admission) -> None:
    pickled = Message(
        headers={"task": "tests.add", "id": "x"},
        body=b"\x80\x04.",
        content_type="application/x-python-serialize",
        content_encoding="binary",
    )
    verdict = admission.check(delivery(pickled))
    assert isinstance(verdict, Undecodable)
    assert type(verdict.exc).__name__ == "ContentDisallowed"


def test_an_unknown_task_is_dead_lettered_as_not_registered(admission: Admission) -> None:
    call = TaskCall(name="tests.nobody", id=str(uuid.uuid4()))
    verdict = admission.check(delivery(encode_task(call)))
    assert isinstance(verdict, DeadLetter)
    assert isinstance(verdict.exc, NotRegistered)
    assert "unknown task tests.nobody" in verdict.reason


def test_arguments_that_do_not_fit_are_dead_lettered(admission: Admission) -> None:
    verdict = admission.check(delivery(encode_task(add_call(args=[1, 2, 3]))))
    assert isinstance(verdict, DeadLetter)
    assert isinstance(verdict.exc, TypeError)


def test_the_redelivery_cap_dead_letters(app: Celeriac, admission: Admission) -> None:
    limit = app.conf.task_redelivery_limit
    below = admission.check(delivery(encode_task(add_call()), redelivered=True, crashes=limit - 1))
    assert isinstance(below, Run)
    capped = admission.check(delivery(encode_task(add_call()), redelivered=True, crashes=limit))
    assert isinstance(capped, DeadLetter)
    assert isinstance(capped.exc, WorkerLostError)


def test_an_expired_message_is_expired(admission: Admission) -> None:
    call = add_call(expires=utcnow() - timedelta(seconds=1))
    assert isinstance(admission.check(delivery(encode_task(call))), Expired)


def test_a_revoked_task_is_revoked(app: Celeriac, admission: Admission) -> None:
    call = add_call()
    app.backend.revoke([call.id])
    admission.revocations.refresh()
    assert isinstance(admission.check(delivery(encode_task(call))), Revoked)


def test_an_early_message_is_deferred_to_its_eta(admission: Admission) -> None:
    eta = utcnow() + timedelta(seconds=30)
    verdict = admission.check(delivery(encode_task(add_call(eta=eta))))
    assert isinstance(verdict, Defer)
    assert verdict.eta == eta


def test_a_redelivered_copy_of_a_finished_task_is_dropped(
    app: Celeriac, admission: Admission
) -> None:
    call = add_call()
    app.backend.store(app.backend.ready_meta(call.id, states.SUCCESS, 3))
    # A first delivery is not looked up: only redelivered copies pay for the read.
    assert isinstance(admission.check(delivery(encode_task(call))), Run)
    verdict = admission.check(delivery(encode_task(call), redelivered=True))
    assert isinstance(verdict, Finished)
    assert verdict.meta.status == states.SUCCESS


def test_reject_on_worker_lost_false_records_the_first_death(app: Celeriac) -> None:
    # Celery compat: without reject_on_worker_lost, a task whose process died fails
    # with WorkerLostError instead of running again.
    @app.task(name="tests.fragile", reject_on_worker_lost=False)
    def fragile() -> None: ...

    admission = Admission(app, Revocations(app.backend), broker_counts_crashes=True)
    call = TaskCall(name="tests.fragile", id=str(uuid.uuid4()))
    assert isinstance(admission.check(delivery(encode_task(call))), Run)
    verdict = admission.check(delivery(encode_task(call), redelivered=True, crashes=1))
    assert isinstance(verdict, DeadLetter)
    assert isinstance(verdict.exc, WorkerLostError)


def test_reject_on_worker_lost_true_runs_the_task_again(app: Celeriac) -> None:
    @app.task(name="tests.sturdy", reject_on_worker_lost=True)
    def sturdy() -> None: ...

    admission = Admission(app, Revocations(app.backend), broker_counts_crashes=True)
    call = TaskCall(name="tests.sturdy", id=str(uuid.uuid4()))
    verdict = admission.check(delivery(encode_task(call), redelivered=True, crashes=1))
    assert isinstance(verdict, Run)


def test_the_task_reject_on_worker_lost_setting_is_the_default(
    app: Celeriac, admission: Admission
) -> None:
    app.conf.task_reject_on_worker_lost = False
    verdict = admission.check(delivery(encode_task(add_call()), redelivered=True, crashes=1))
    assert isinstance(verdict, DeadLetter)
    assert isinstance(verdict.exc, WorkerLostError)


# -- hostile input: every failure is a verdict, never an exception --------------------


def json_message(headers: dict[str, Any], body: bytes) -> Message:
    return Message(
        headers=headers, body=body, content_type="application/json", content_encoding="utf-8"
    )


def test_a_timelimit_too_large_for_a_float_is_undecodable(admission: Admission) -> None:
    headers = {"task": "tests.add", "id": "big", "timelimit": [10**400, None]}
    verdict = admission.check(delivery(json_message(headers, b"[[1, 2], {}, {}]")))
    assert isinstance(verdict, Undecodable)
    assert "time limit must be a number of seconds" in str(verdict.exc)


def test_headers_nested_too_deep_are_undecodable(admission: Admission) -> None:
    nested: list[Any] = []
    for _ in range(1000):
        nested = [nested]
    headers = {"task": "tests.add", "id": "deep", "x-deep": nested}
    verdict = admission.check(delivery(json_message(headers, b"[[1, 2], {}, {}]")))
    assert isinstance(verdict, Undecodable)
    assert "nested more than" in str(verdict.exc)


def test_headers_over_the_size_limit_are_undecodable(app: Celeriac) -> None:
    app.conf.task_max_message_size = 1000
    app.task(name="tests.add")(lambda x, y: x + y)
    admission = Admission(app, Revocations(app.backend), broker_counts_crashes=True)
    headers = {"task": "tests.add", "id": "fat", "x-fat": "a" * 2000}
    verdict = admission.check(delivery(json_message(headers, b"[[1, 2], {}, {}]")))
    assert isinstance(verdict, Undecodable)
    assert type(verdict.exc).__name__ == "MessageTooLarge"
    assert "headers" in str(verdict.exc)


def test_an_unexpected_error_while_checking_is_a_verdict(app: Celeriac) -> None:
    class Exploding(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            raise RecursionError("maximum recursion depth exceeded")

    app.task(name="tests.add")(lambda x, y: x + y)
    admission = Admission(app, Revocations(app.backend), broker_counts_crashes=True)
    verdict = admission.check(delivery(json_message(Exploding(), b"[[1, 2], {}, {}]")))
    assert isinstance(verdict, Undecodable)
    assert isinstance(verdict.exc, RecursionError)


def test_describe_error_cuts_long_messages_and_survives_broken_ones() -> None:
    from celeriac.worker.admit import REASON_CHARS, describe_error

    long = describe_error(ValueError("x" * 5000))
    assert long.startswith("ValueError: xxx")
    assert long.endswith("(4000 more characters)")
    assert len(long) < REASON_CHARS + 100

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RecursionError("too deep")

    assert describe_error(Unprintable()) == ("Unprintable: <message not printable: RecursionError>")
