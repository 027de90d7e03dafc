"""The exception tree: Celery's names, messages, and pickling across processes."""

from __future__ import annotations

import pickle
from datetime import datetime, timezone

import pytest

from celeriac import exceptions
from celeriac.exceptions import (
    CeleriacError,
    MaxRetriesExceededError,
    NotRegistered,
    Reject,
    RemoteTaskError,
    ResultTimeout,
    Retry,
)

TREE = {
    "ImproperlyConfigured": "CeleriacError",
    "NotRegistered": "CeleriacError",
    "SerializationError": "CeleriacError",
    "ContentDisallowed": "SerializationError",
    "MessageTooLarge": "SerializationError",
    "InvalidTaskError": "CeleriacError",
    "BrokerError": "CeleriacError",
    "BrokerConnectionError": "BrokerError",
    "QueueNotFound": "BrokerError",
    "PublishError": "BrokerError",
    "BackendError": "CeleriacError",
    "ResultTimeout": "BackendError",
    "ResultLost": "BackendError",
    "TaskPredicate": "CeleriacError",
    "Retry": "TaskPredicate",
    "Ignore": "TaskPredicate",
    "Reject": "TaskPredicate",
    "TaskError": "CeleriacError",
    "MaxRetriesExceededError": "TaskError",
    "TaskRevokedError": "TaskError",
    "ChordError": "TaskError",
    "RemoteTaskError": "TaskError",
    "SecurityError": "CeleriacError",
    "WorkerError": "CeleriacError",
    "WorkerShutdown": "WorkerError",
}


@pytest.mark.parametrize(("name", "parent"), sorted(TREE.items()))
def test_exception_sits_where_the_module_docstring_draws_it(name: str, parent: str) -> None:
    cls = getattr(exceptions, name)
    assert issubclass(cls, getattr(exceptions, parent))
    assert name in (exceptions.__doc__ or "")


@pytest.mark.parametrize("name", ["SoftTimeLimitExceeded", "TimeLimitExceeded", "WorkerLostError"])
def test_time_limit_errors_stay_outside_the_tree(name: str) -> None:
    cls = getattr(exceptions, name)
    assert issubclass(cls, Exception)
    assert not issubclass(cls, CeleriacError)


def test_every_exported_name_exists() -> None:
    for name in exceptions.__all__:
        assert isinstance(getattr(exceptions, name), type)


def test_timeout_error_is_result_timeout_and_not_an_os_error() -> None:
    # Celery compat: celery.exceptions.TimeoutError is not an OSError either, so socket
    # error handlers do not swallow result timeouts.
    assert exceptions.TimeoutError is ResultTimeout
    assert not issubclass(ResultTimeout, OSError)


def test_not_registered_is_a_key_error_that_prints_the_bare_name() -> None:
    exc = NotRegistered("proj.add")
    assert isinstance(exc, KeyError)
    assert str(exc) == "proj.add"
    assert str(NotRegistered()) == "task not registered"


def test_retry_describes_when_it_runs() -> None:
    assert str(Retry(when=5)) == "Retry in 5s"
    assert str(Retry(exc=KeyError(5), when=1.5)) == "Retry in 1.5s: KeyError(5)"
    assert str(Retry("custom message", when=5)) == "custom message"
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert str(Retry(when=when)) == "Retry at 2026-01-01 00:00:00+00:00"


def test_reject_carries_reason_and_requeue() -> None:
    exc = Reject("bad input", requeue=True)
    assert (exc.reason, exc.requeue) == ("bad input", True)
    assert str(exc) == "reject requeue=True: bad input"


def test_max_retries_exceeded_keeps_the_task_arguments() -> None:
    exc = MaxRetriesExceededError("too many", task_args=[1], task_kwargs={"a": 2})
    assert (exc.args, exc.task_args, exc.task_kwargs) == (("too many",), [1], {"a": 2})


def test_remote_task_error_prints_module_name_and_arguments() -> None:
    assert str(RemoteTaskError("MyErr", "proj.errors", ["a", 1])) == "proj.errors.MyErr: a, 1"
    assert str(RemoteTaskError("MyErr", None, "text")) == "MyErr: text"


SAMPLES: list[BaseException] = [
    exceptions.ImproperlyConfigured("conf"),
    NotRegistered("proj.add"),
    exceptions.ContentDisallowed("pickle"),
    exceptions.MessageTooLarge("big"),
    exceptions.InvalidTaskError("bad"),
    exceptions.BrokerConnectionError("down"),
    exceptions.PublishError("lost"),
    ResultTimeout("waited"),
    exceptions.ResultLost("gone"),
    Retry("again", KeyError(1), 5),
    exceptions.Ignore(),
    Reject("r", requeue=True),
    MaxRetriesExceededError("max"),
    exceptions.TaskRevokedError("expired"),
    exceptions.ChordError("dep failed"),
    RemoteTaskError("MyErr", "mod", ["x"]),
    exceptions.SecurityError("no"),
    exceptions.WorkerShutdown(),
    exceptions.SoftTimeLimitExceeded(),
    exceptions.TimeLimitExceeded(5.0),
    exceptions.WorkerLostError("died"),
]


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_exception_survives_pickling_between_processes(exc: BaseException) -> None:
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc)
    assert repr(copy.args) == repr(exc.args)
    assert str(copy) == str(exc)


def test_max_retries_exceeded_keeps_the_task_arguments_through_pickling() -> None:
    exc = MaxRetriesExceededError("max", task_args=[1], task_kwargs={"a": 2})
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.args, copy.task_args, copy.task_kwargs) == (("max",), [1], {"a": 2})
