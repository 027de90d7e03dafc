"""Celery-named signals: who is called, with what, and what a failing receiver does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from celeriac import Celeriac, signals
from celeriac.exceptions import ImproperlyConfigured
from celeriac.signals import Signal
from tests.helpers import wait_for

if TYPE_CHECKING:
    from tests.conftest import StartWorker


@pytest.fixture
def recorded() -> Any:
    calls: list[tuple[str, dict[str, Any]]] = []
    connected: list[tuple[Signal, Any]] = []

    def listen(signal: Signal) -> None:
        def receiver(sender: Any = None, **named: Any) -> None:
            calls.append((signal.name, {"sender": sender, **named}))

        signal.connect(receiver)
        connected.append((signal, receiver))

    yield calls, listen
    for signal, receiver in connected:
        signal.disconnect(receiver)


def test_a_task_run_sends_prerun_success_and_postrun(
    app: Celeriac, start_worker: StartWorker, recorded: Any
) -> None:
    calls, listen = recorded
    for signal in (
        signals.task_received,
        signals.task_prerun,
        signals.task_success,
        signals.task_postrun,
    ):
        listen(signal)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    start_worker()
    result = add.delay(2, 3)
    assert result.get(timeout=5) == 5
    # The result is stored before task_postrun is sent: wait for the worker to send it.
    wait_for(lambda: len(calls) >= 4, timeout=5, what="task_postrun")
    names = [name for name, _ in calls]
    assert names == ["task_received", "task_prerun", "task_success", "task_postrun"]
    prerun = calls[1][1]
    assert prerun["task_id"] == result.id
    assert prerun["args"] == [2, 3]
    assert calls[2][1]["result"] == 5
    assert calls[3][1]["state"] == "SUCCESS"


def test_a_failure_sends_task_failure_with_the_exception(
    app: Celeriac, start_worker: StartWorker, recorded: Any
) -> None:
    calls, listen = recorded
    listen(signals.task_failure)

    @app.task
    def boom() -> None:
        raise KeyError("missing")

    start_worker()
    result = boom.delay()
    with pytest.raises(KeyError):
        result.get(timeout=5)
    [(_, named)] = calls
    assert isinstance(named["exception"], KeyError)
    assert named["task_id"] == result.id
    assert "KeyError" in named["traceback"]


def test_publishing_sends_before_and_after_task_publish(app: Celeriac, recorded: Any) -> None:
    calls, listen = recorded
    listen(signals.before_task_publish)
    listen(signals.after_task_publish)

    @app.task
    def job() -> None:
        pass

    job.delay()
    assert [name for name, _ in calls] == ["before_task_publish", "after_task_publish"]
    assert calls[0][1]["sender"] == job.name
    assert calls[0][1]["headers"]["task"] == job.name


def test_a_failing_receiver_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    signal = Signal("test_signal")
    seen: list[str] = []

    def broken(**named: Any) -> None:
        raise RuntimeError("receiver bug")

    def fine(**named: Any) -> None:
        seen.append("fine")

    signal.connect(broken)
    signal.connect(fine)
    responses = signal.send(sender="x")
    assert seen == ["fine"]
    assert isinstance(responses[0][1], RuntimeError)
    assert "receiver bug" in caplog.text


def test_a_receiver_can_listen_to_one_sender_only() -> None:
    signal = Signal("test_signal")
    seen: list[Any] = []

    @signal.connect(sender="tasks.add")
    def only_add(sender: Any = None, **named: Any) -> None:
        seen.append(sender)

    signal.send(sender="tasks.other")
    signal.send(sender="tasks.add")
    assert seen == ["tasks.add"]


# -- Celery's connect options -------------------------------------------------------------


def test_a_receiver_is_held_weakly_by_default_as_in_celery() -> None:
    import gc

    from celery.utils.dispatch import Signal as CelerySignal

    def check(signal: Any) -> None:
        calls: list[str] = []
        signal.connect(lambda **kwargs: calls.append("weak"))
        signal.connect(lambda **kwargs: calls.append("strong"), weak=False)
        gc.collect()
        signal.send(sender=None)
        assert calls == ["strong"], signal

    check(Signal("weak"))
    check(CelerySignal(name="weak"))


def test_dispatch_uid_connects_a_receiver_once() -> None:
    signal = Signal("uid")
    calls: list[int] = []

    def first(**kwargs: Any) -> None:
        calls.append(1)

    def second(**kwargs: Any) -> None:
        calls.append(2)

    signal.connect(first, dispatch_uid="only-once")
    signal.connect(second, dispatch_uid="only-once")  # same uid: ignored, as in Celery
    signal.send(sender=None)
    assert calls == [1]
    assert signal.disconnect(dispatch_uid="only-once")
    signal.send(sender=None)
    assert calls == [1]


def test_a_bound_method_receiver_is_known_by_its_object() -> None:
    signal = Signal("method")

    class Listener:
        def __init__(self) -> None:
            self.calls = 0

        def on(self, **kwargs: Any) -> None:
            self.calls += 1

    listener = Listener()
    signal.connect(listener.on)
    signal.connect(listener.on)
    signal.send(sender=None)
    assert listener.calls == 1


def test_retrying_receivers_are_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="retry=True"):
        Signal("retry").connect(lambda **kwargs: None, retry=True)
