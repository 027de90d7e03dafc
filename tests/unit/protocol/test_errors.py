"""Exceptions to and from Celery's stored form (spec §3.2), with celery.backends.base as the
oracle, and the safety rules of `decode_exception`."""

# kombu and Celery (the oracles here) ship no type hints.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import os
import sys
import types
from typing import Any

import celery.exceptions as celery_exc
import pytest
from celery import Celery

from celeriac import exceptions as ours
from celeriac.protocol.errors import decode_exception, encode_exception
from celeriac.protocol.serializers import json_loads


class MyError(Exception):
    """A task's own exception class, importable from this (loaded) module."""


class Outer:
    class InnerError(Exception):
        pass


class NeedsTwoArguments(Exception):
    def __init__(self, first: Any, second: Any) -> None:
        super().__init__(first, second)


@pytest.fixture(scope="module")
def celery_app() -> Celery:
    """Stock Celery with an in-process result store, used as the oracle."""
    return Celery("oracle", backend="cache+memory://", set_as_current=False)


def prepared(celery_app: Celery, exc: BaseException) -> dict[str, Any]:
    """What stock Celery stores for `exc`, with its tuple as the list JSON makes of it."""
    stored = dict(celery_app.backend.prepare_exception(exc))
    stored["exc_message"] = list(stored["exc_message"])
    return stored


def stored_by_celery(celery_app: Celery, task_id: str, exc: BaseException) -> dict[str, Any]:
    """The FAILURE meta stock Celery writes for `exc`, read back from its raw stored JSON."""
    backend = celery_app.backend
    backend.mark_as_failure(task_id, exc)
    raw = backend.get(backend.get_key_for_task(task_id))
    meta: dict[str, Any] = json_loads(raw)
    return meta


# -- encode ----------------------------------------------------------------------------------

BUILTIN_FAILURES: list[BaseException] = [
    ValueError("boom 1"),
    KeyError(5),
    TypeError("a", 1, None),
    ZeroDivisionError(),
    OSError(2, "No such file or directory"),
    ValueError(object()),
    RuntimeError(["nested", {"k": 1.5}]),
    MyError("mine"),
    Outer.InnerError("nested class"),
]


@pytest.mark.parametrize("exc", BUILTIN_FAILURES, ids=repr)
def test_encode_matches_celery_prepare_exception(celery_app: Celery, exc: BaseException) -> None:
    assert encode_exception(exc) == prepared(celery_app, exc)


CELERY_NAMED: list[tuple[BaseException, BaseException]] = [
    (ours.NotRegistered("proj.nope"), celery_exc.NotRegistered("proj.nope")),
    (ours.TaskRevokedError("expired"), celery_exc.TaskRevokedError("expired")),
    (ours.ChordError("Dependency d raised X"), celery_exc.ChordError("Dependency d raised X")),
    (ours.MaxRetriesExceededError("too many"), celery_exc.MaxRetriesExceededError("too many")),
    (ours.Ignore(), celery_exc.Ignore()),
    (ours.Reject("bad", True), celery_exc.Reject("bad", True)),
    (ours.InvalidTaskError("nope"), celery_exc.InvalidTaskError("nope")),
    (ours.ImproperlyConfigured("conf"), celery_exc.ImproperlyConfigured("conf")),
    (ours.SecurityError("no"), celery_exc.SecurityError("no")),
    (ours.TaskError("t"), celery_exc.TaskError("t")),
    (ours.QueueNotFound("q"), celery_exc.QueueNotFound("q")),
    (ours.TimeoutError("waited"), celery_exc.TimeoutError("waited")),
    (ours.TimeLimitExceeded(5.0), celery_exc.TimeLimitExceeded(5.0)),
    (ours.SoftTimeLimitExceeded(), celery_exc.SoftTimeLimitExceeded()),
    (ours.WorkerLostError("died"), celery_exc.WorkerLostError("died")),
]


@pytest.mark.parametrize(("mine", "theirs"), CELERY_NAMED, ids=lambda e: type(e).__name__)
def test_encode_writes_celery_named_exceptions_as_celery_does(
    celery_app: Celery, mine: BaseException, theirs: BaseException
) -> None:
    assert encode_exception(mine) == prepared(celery_app, theirs)


def test_encode_writes_retry_under_celery_exceptions() -> None:
    stored = encode_exception(ours.Retry("again", ValueError(1), 5))
    assert (stored["exc_type"], stored["exc_module"]) == ("Retry", "celery.exceptions")
    assert stored["exc_message"] == ["again", "ValueError(1)", 5]


def test_encode_keeps_celeriac_only_exceptions_under_celeriac() -> None:
    stored = encode_exception(ours.PublishError("down"))
    assert stored == {
        "exc_type": "PublishError",
        "exc_message": ["down"],
        "exc_module": "celeriac.exceptions",
    }


def test_encode_replaces_unserializable_arguments_by_their_repr() -> None:
    lock = object()
    stored = encode_exception(ValueError(lock, 1))
    assert stored["exc_message"] == [repr(lock), 1]


def test_encode_passes_a_remote_error_on_under_its_original_name() -> None:
    data = {"exc_type": "MyErr", "exc_message": ["x", 1], "exc_module": "nonexistent.mod"}
    assert encode_exception(decode_exception(data)) == data


# -- decode: what may be rebuilt -------------------------------------------------------------


@pytest.mark.parametrize("exc", BUILTIN_FAILURES, ids=repr)
def test_decode_rebuilds_builtins_and_loaded_classes(exc: BaseException) -> None:
    rebuilt = decode_exception(encode_exception(exc))
    assert type(rebuilt) is type(exc)
    assert rebuilt.args == tuple(encode_exception(exc)["exc_message"])


@pytest.mark.parametrize(("mine", "theirs"), CELERY_NAMED, ids=lambda e: type(e).__name__)
def test_decode_rebuilds_celery_named_exceptions_as_ours(
    celery_app: Celery, mine: BaseException, theirs: BaseException
) -> None:
    rebuilt = decode_exception(prepared(celery_app, theirs))
    assert type(rebuilt) is type(mine)
    assert rebuilt.args == mine.args


def test_decode_reads_celery_exceptions_under_the_celeriac_module_too() -> None:
    data = {"exc_type": "ChordError", "exc_message": ["x"], "exc_module": "celeriac.exceptions"}
    assert isinstance(decode_exception(data), ours.ChordError)


def test_decode_reads_a_message_stored_as_a_plain_string() -> None:
    rebuilt = decode_exception(
        {"exc_type": "ValueError", "exc_module": "builtins", "exc_message": "old"}
    )
    assert isinstance(rebuilt, ValueError)
    assert rebuilt.args == ("old",)


def test_decode_reads_a_missing_module_as_builtins() -> None:
    rebuilt = decode_exception({"exc_type": "KeyError", "exc_message": ["k"]})
    assert isinstance(rebuilt, KeyError)


def test_decode_returns_the_exception_object_a_pickle_backend_stored() -> None:
    exc = MyError("pickled")
    assert decode_exception(exc) is exc


# -- decode: what must not be rebuilt ----------------------------------------------------------


def test_decode_imports_nothing_for_a_class_of_an_unloaded_module() -> None:
    assert "tabnanny" not in sys.modules  # a real stdlib module nothing here imports
    data = {"exc_type": "NannyNag", "exc_message": ["lineno", "msg"], "exc_module": "tabnanny"}
    rebuilt = decode_exception(data)
    assert isinstance(rebuilt, ours.RemoteTaskError)
    assert (rebuilt.exc_type, rebuilt.exc_module) == ("NannyNag", "tabnanny")
    assert rebuilt.exc_message == ["lineno", "msg"]
    assert "tabnanny" not in sys.modules


def test_decode_returns_remote_task_error_for_an_unknown_module() -> None:
    data = {"exc_type": "MyErr", "exc_message": ["x"], "exc_module": "nonexistent.mod"}
    rebuilt = decode_exception(data)
    assert isinstance(rebuilt, ours.RemoteTaskError)
    assert str(rebuilt) == "nonexistent.mod.MyErr: x"
    assert "nonexistent" not in sys.modules


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("builtins", "SystemExit"),
        ("builtins", "KeyboardInterrupt"),
        ("builtins", "GeneratorExit"),
        ("builtins", "BaseException"),
        ("builtins", "object"),
        ("builtins", "type"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("builtins", "print"),
        ("os", "system"),
        ("os", "path.join"),
        ("subprocess", "Popen"),
        ("celery.exceptions", "WorkerShutdown"),
        ("celeriac.exceptions", "builtins"),
        ("celeriac.exceptions", "Any"),
        ("tests.unit.protocol.test_errors", "Outer"),
    ],
)
def test_decode_never_builds_a_non_exception_class(module: str, name: str) -> None:
    data = {"exc_type": name, "exc_message": ["import os; os.remove('x')"], "exc_module": module}
    rebuilt = decode_exception(data)
    assert isinstance(rebuilt, ours.RemoteTaskError)
    assert (rebuilt.exc_type, rebuilt.exc_module) == (name, module)


def test_decode_never_calls_os_system(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(os, "system", lambda *args: calls.append(args))
    data = {"exc_type": "system", "exc_message": "touch /tmp/pwned", "exc_module": "os"}
    assert isinstance(decode_exception(data), ours.RemoteTaskError)
    assert calls == []


def test_decode_never_runs_a_module_level_getattr(monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up: list[str] = []
    lazy = types.ModuleType("celeriac_test_lazy_module")

    def module_getattr(name: str) -> type[Exception]:
        looked_up.append(name)
        return MyError

    lazy.__getattr__ = module_getattr  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, lazy.__name__, lazy)
    data = {"exc_type": "LazyError", "exc_message": [], "exc_module": lazy.__name__}
    assert isinstance(decode_exception(data), ours.RemoteTaskError)
    assert looked_up == []


def test_decode_never_runs_a_property_on_the_way_to_a_class() -> None:
    ran: list[bool] = []

    class Holder:
        @property
        def Error(self) -> type[Exception]:
            ran.append(True)
            return MyError

    module = types.ModuleType("celeriac_test_holder_module")
    module.holder = Holder()  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        data = {"exc_type": "holder.Error", "exc_message": [], "exc_module": module.__name__}
        assert isinstance(decode_exception(data), ours.RemoteTaskError)
    finally:
        del sys.modules[module.__name__]
    assert ran == []


def test_decode_returns_remote_task_error_when_the_constructor_fails() -> None:
    data = {
        "exc_type": "NeedsTwoArguments",
        "exc_message": ["only one"],
        "exc_module": __name__,
    }
    rebuilt = decode_exception(data)
    assert isinstance(rebuilt, ours.RemoteTaskError)
    assert (rebuilt.exc_type, rebuilt.exc_message) == ("NeedsTwoArguments", ["only one"])


def test_decode_rebuilds_a_class_whose_constructor_takes_the_stored_arguments() -> None:
    data = {"exc_type": "NeedsTwoArguments", "exc_message": [1, 2], "exc_module": __name__}
    rebuilt = decode_exception(data)
    assert isinstance(rebuilt, NeedsTwoArguments)
    assert rebuilt.args == (1, 2)


@pytest.mark.parametrize("data", [None, "boom", 5, [1], {"exc_message": ["x"]}, {"exc_type": 5}])
def test_decode_returns_remote_task_error_for_malformed_data(data: Any) -> None:
    rebuilt = decode_exception(data)
    assert isinstance(rebuilt, ours.RemoteTaskError)
    assert rebuilt.exc_type == "UnknownError"


def test_decode_wraps_a_pickled_base_exception_that_is_not_an_exception() -> None:
    rebuilt = decode_exception(SystemExit(3))
    assert isinstance(rebuilt, ours.RemoteTaskError)
    assert (rebuilt.exc_type, rebuilt.exc_module, rebuilt.exc_message) == (
        "SystemExit",
        "builtins",
        [3],
    )


# -- what stock Celery stores ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ValueError("boom 1"), ValueError),
        (KeyError(5), KeyError),
        (celery_exc.NotRegistered("proj.nope"), ours.NotRegistered),
        (celery_exc.TaskRevokedError("expired"), ours.TaskRevokedError),
        (celery_exc.ChordError("Dependency d514 raised ValueError('boom 1')"), ours.ChordError),
        (celery_exc.TimeLimitExceeded(5.0), ours.TimeLimitExceeded),
        (celery_exc.WorkerLostError("lost"), ours.WorkerLostError),
        (celery_exc.TimeoutError("t"), ours.ResultTimeout),
        (MyError("mine"), MyError),
    ],
    ids=lambda value: type(value).__name__,
)
def test_decode_reads_what_celery_mark_as_failure_stores(
    celery_app: Celery, exc: BaseException, expected: type[Exception]
) -> None:
    meta = stored_by_celery(celery_app, f"t-{type(exc).__name__}", exc)
    assert meta["status"] == "FAILURE"
    rebuilt = decode_exception(meta["result"])
    assert type(rebuilt) is expected
    assert rebuilt.args == exc.args


def test_celery_reads_what_we_encode(celery_app: Celery) -> None:
    for exc in (ValueError("v"), ours.NotRegistered("proj.x"), ours.TimeLimitExceeded(2.0)):
        rebuilt = celery_app.backend.exception_to_python(encode_exception(exc))
        assert type(rebuilt).__name__ == type(exc).__name__
        assert rebuilt.args == exc.args
