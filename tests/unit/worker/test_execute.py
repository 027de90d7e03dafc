"""The life of one task in a worker (executor + consumer), on the memory broker.

A worker thread runs the real consumer and executor; what the tests assert is what a
user sees: results, states, dead letters, messages left in queues.
"""

from __future__ import annotations

import base64
import itertools
import pickle
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from celeriac import Celeriac, states
from celeriac._time import utcnow
from celeriac.brokers.base import INVALID_ENVELOPE
from celeriac.brokers.memory import MemoryBroker
from celeriac.exceptions import (
    Ignore,
    MaxRetriesExceededError,
    NotRegistered,
    Reject,
    RemoteTaskError,
    TaskRevokedError,
    WorkerLostError,
)
from celeriac.protocol.codec import TaskCall, encode_task
from celeriac.protocol.message import Message
from tests.helpers import wait_for

if TYPE_CHECKING:
    from tests.conftest import StartWorker


def publish_raw(app: Celeriac, message: Message, queue: str = "celery") -> None:
    app.broker.publish(message, queue=queue)


def dead_letters(app: Celeriac) -> list[Any]:
    return app.broker.list_dead_letters()


def leased(app: Celeriac) -> int:
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    return broker.leased_count()


def test_success_is_stored_and_the_message_acked(app: Celeriac, start_worker: StartWorker):
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    start_worker()
    result = add.delay(2, 3)
    assert result.get(timeout=5) == 5
    assert result.state == states.SUCCESS
    assert result.date_done is not None
    assert app.broker.size("celery") == 0
    assert dead_letters(app) == []


def test_failure_is_stored_with_its_traceback(app: Celeriac, start_worker: StartWorker):
    @app.task
    def fail(x: int) -> int:
        raise ValueError(f"bad {x}")

    start_worker()
    result = fail.delay(1)
    with pytest.raises(ValueError, match="bad 1"):
        result.get(timeout=5)
    assert result.state == states.FAILURE
    assert result.traceback is not None
    assert "ValueError: bad 1" in result.traceback
    assert isinstance(result.result, ValueError)


def test_failure_of_an_unimported_class_comes_back_generic(
    app: Celeriac, start_worker: StartWorker
):
    @app.task
    def fail() -> None:
        raise ValueError("x")

    start_worker()
    result = fail.delay()
    with pytest.raises(ValueError):
        result.get(timeout=5)
    backend = app.backend
    meta = backend.get(result.id)
    assert meta is not None
    stored = dict(meta.result)
    stored["exc_module"] = "not.imported.anywhere"
    backend.forget(result.id)
    backend.store(backend.ready_meta(result.id, states.FAILURE, stored))
    with pytest.raises(RemoteTaskError) as caught:
        app.AsyncResult(result.id).get(timeout=5)
    assert caught.value.exc_type == "ValueError"
    assert caught.value.exc_module == "not.imported.anywhere"


def test_retry_runs_again_with_more_retries(app: Celeriac, start_worker: StartWorker):
    seen: list[int] = []

    @app.task(bind=True, max_retries=3, default_retry_delay=0.05)
    def flaky(self: Any, n: int) -> int:
        seen.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(exc=KeyError("later"))
        return n

    start_worker()
    assert flaky.delay(9).get(timeout=5) == 9
    assert seen == [0, 1, 2]


def test_retry_over_the_limit_raises_the_original_exception(
    app: Celeriac, start_worker: StartWorker
):
    @app.task(bind=True, max_retries=1, default_retry_delay=0.01)
    def always(self: Any) -> None:
        raise self.retry(exc=KeyError("gone"))

    start_worker()
    with pytest.raises(KeyError, match="gone"):
        always.delay().get(timeout=5)


def test_retry_over_the_limit_without_exc_raises_max_retries_exceeded(
    app: Celeriac, start_worker: StartWorker
):
    @app.task(bind=True, max_retries=0, default_retry_delay=0.01)
    def always(self: Any) -> None:
        raise self.retry()

    start_worker()
    with pytest.raises(MaxRetriesExceededError):
        always.delay().get(timeout=5)


def test_retry_records_the_retry_state_while_it_waits(app: Celeriac, start_worker: StartWorker):
    @app.task(bind=True, max_retries=1, default_retry_delay=30)
    def slow_retry(self: Any) -> None:
        raise self.retry(exc=KeyError("wait"))

    start_worker()
    result = slow_retry.delay()
    wait_for(lambda: result.state == states.RETRY, timeout=5)
    assert isinstance(result.result, KeyError)
    # The retry waits on the broker (delayed), not in a worker.
    assert app.broker.size("celery") == 1


def test_autoretry_for_retries_listed_exceptions(app: Celeriac, start_worker: StartWorker):
    calls: list[int] = []

    @app.task(
        bind=True,
        autoretry_for=(ConnectionError,),
        max_retries=5,
        retry_backoff=0.01,
        retry_jitter=False,
    )
    def unstable(self: Any) -> str:
        calls.append(self.request.retries)
        if len(calls) < 3:
            raise ConnectionError("flaky network")
        return "ok"

    start_worker()
    assert unstable.delay().get(timeout=5) == "ok"
    assert calls == [0, 1, 2]


def test_ignore_stores_nothing(app: Celeriac, start_worker: StartWorker):
    ran = threading.Event()

    @app.task
    def skip() -> None:
        ran.set()
        raise Ignore()

    start_worker()
    result = skip.delay()
    assert ran.wait(5)
    wait_for(lambda: app.broker.size("celery") == 0 and not leased(app), timeout=5)
    assert result.state == states.PENDING


def test_reject_without_requeue_dead_letters_the_message(app: Celeriac, start_worker: StartWorker):
    @app.task
    def refuse() -> None:
        raise Reject("not today", requeue=False)

    start_worker()
    refuse.delay()
    [letter] = wait_for(lambda: dead_letters(app), timeout=5)
    assert "not today" in letter.reason


def test_reject_with_requeue_runs_it_again(app: Celeriac, start_worker: StartWorker):
    runs: list[int] = []

    @app.task
    def once_more() -> int:
        runs.append(1)
        if len(runs) == 1:
            raise Reject("again", requeue=True)
        return len(runs)

    start_worker()
    assert once_more.delay().get(timeout=5) == 2


def test_expired_task_is_revoked_not_run_and_kept_in_the_dead_letters(
    app: Celeriac, start_worker: StartWorker
):
    ran: list[int] = []

    @app.task
    def late() -> None:
        ran.append(1)

    result = late.apply_async(expires=utcnow() - timedelta(seconds=1))
    start_worker()
    with pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=5)
    assert result.state == states.REVOKED
    assert ran == []
    letters = app.broker.list_dead_letters()
    assert [letter.message.headers["id"] for letter in letters] == [result.id]
    assert letters[0].reason.startswith("expired at ")


def test_countdown_waits_on_the_broker(app: Celeriac, start_worker: StartWorker):
    @app.task
    def stamp() -> float:
        return time.time()

    start_worker()
    sent = time.time()
    result = stamp.apply_async(countdown=0.6)
    assert result.get(timeout=5) >= sent + 0.6


def test_early_eta_message_is_handed_back_to_the_broker(app: Celeriac, start_worker: StartWorker):
    """A stock producer puts ETA messages straight in the queue; we must not run them
    early nor hold them in the worker."""

    @app.task
    def stamp() -> float:
        return time.time()

    eta = utcnow() + timedelta(seconds=0.6)
    call = TaskCall(name=stamp.name, id=str(uuid.uuid4()), eta=eta)
    publish_raw(app, encode_task(call))
    start_worker()
    value = app.AsyncResult(call.id).get(timeout=5)
    assert value >= eta.timestamp()


def test_rate_limit_spaces_task_starts(app: Celeriac, start_worker: StartWorker):
    starts: list[float] = []

    @app.task(rate_limit="10/s")
    def limited() -> None:
        starts.append(time.time())

    start_worker(concurrency=4)
    results = [limited.delay() for _ in range(5)]
    for result in results:
        result.get(timeout=10)
    starts.sort()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.1 - 0.01


def test_track_started_stores_started_with_pid_and_hostname(
    app: Celeriac, start_worker: StartWorker
):
    release = threading.Event()

    @app.task(track_started=True)
    def hold() -> None:
        release.wait(5)

    worker = start_worker()
    result = hold.delay()
    wait_for(lambda: result.state == states.STARTED, timeout=5)
    assert result.result["hostname"] == worker.hostname
    assert isinstance(result.result["pid"], int)
    release.set()
    result.get(timeout=5)


def test_result_extended_stores_name_args_and_worker(app: Celeriac, start_worker: StartWorker):
    app.conf.result_extended = True

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    worker = start_worker()
    result = add.delay(1, 2)
    result.get(timeout=5)
    assert result.name == add.name
    assert result.args == [1, 2]
    assert result.kwargs == {}
    assert result.worker == worker.hostname
    assert result.queue == "celery"


def test_ignore_result_stores_nothing(app: Celeriac, start_worker: StartWorker):
    done = threading.Event()

    @app.task(ignore_result=True)
    def quiet() -> int:
        done.set()
        return 1

    start_worker()
    result = quiet.delay()
    assert done.wait(5)
    wait_for(lambda: not leased(app), timeout=5)
    assert result.state == states.PENDING


def test_early_ack_acks_before_running(app: Celeriac, start_worker: StartWorker):
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    leased_while_running: list[int] = []

    @app.task(acks_late=False)
    def early() -> None:
        leased_while_running.append(broker.leased_count())

    @app.task
    def late() -> None:
        leased_while_running.append(broker.leased_count())

    start_worker(prefetch=1)
    early.delay().get(timeout=5)
    late.delay().get(timeout=5)
    assert leased_while_running == [0, 1]


# -- bad input: each gives a clear reason, a dead letter, and loses nothing else ----------


def _good_and_bad(app: Celeriac, start_worker: StartWorker, bad: Message) -> Any:
    @app.task(name="tests.echo")
    def echo(x: int) -> int:
        return x

    before = echo.delay(1)
    publish_raw(app, bad)
    after = echo.delay(2)
    start_worker()
    assert before.get(timeout=5) == 1
    assert after.get(timeout=5) == 2
    [letter] = wait_for(lambda: dead_letters(app), timeout=5)
    return letter


def test_malformed_body_is_dead_lettered(app: Celeriac, start_worker: StartWorker):
    bad = Message(
        headers={"task": "tests.echo", "id": "bad-1"},
        body=b"{not json",
        content_type="application/json",
    )
    letter = _good_and_bad(app, start_worker, bad)
    assert "SerializationError" in letter.reason
    assert letter.message.body == b"{not json"
    with pytest.raises(Exception, match="invalid JSON"):
        app.AsyncResult("bad-1").get(timeout=5)


def test_unknown_task_is_dead_lettered_and_fails_as_not_registered(
    app: Celeriac, start_worker: StartWorker
):
    call = TaskCall(name="tests.nobody", id=str(uuid.uuid4()))
    letter = _good_and_bad(app, start_worker, encode_task(call))
    assert "unknown task tests.nobody" in letter.reason
    with pytest.raises(NotRegistered):
        app.AsyncResult(call.id).get(timeout=5)


def test_wrong_argument_count_is_dead_lettered(app: Celeriac, start_worker: StartWorker):
    call = TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[1, 2, 3])
    letter = _good_and_bad(app, start_worker, encode_task(call))
    assert "bad arguments" in letter.reason
    with pytest.raises(TypeError):
        app.AsyncResult(call.id).get(timeout=5)


def test_unaccepted_content_type_is_dead_lettered_and_never_decoded(
    app: Celeriac, start_worker: StartWorker, tmp_path: Path
):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    body = pickle.dumps([[Exploit()], {}, {}])
    bad = Message(
        headers={"task": "tests.echo", "id": "pickled"},
        body=body,
        content_type="application/x-python-serialize",
        content_encoding="binary",
    )
    letter = _good_and_bad(app, start_worker, bad)
    assert "ContentDisallowed" in letter.reason
    assert not marker.exists()


def test_oversized_payload_is_dead_lettered(app: Celeriac, start_worker: StartWorker):
    app.conf.task_max_message_size = 1000
    call = TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=["x" * 5000])
    letter = _good_and_bad(app, start_worker, encode_task(call))
    assert "MessageTooLarge" in letter.reason


def test_missing_headers_are_dead_lettered(app: Celeriac, start_worker: StartWorker):
    bad = Message(headers={}, body=base64.b64encode(b"[[], {}, {}]"))
    letter = _good_and_bad(app, start_worker, bad)
    assert "InvalidTaskError" in letter.reason or "SerializationError" in letter.reason


def test_missing_headers_name_the_task_by_its_correlation_id(
    app: Celeriac, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
):
    # Celery sets the correlation id to the task id: the log line can still name it.
    bad = Message(headers={}, body=b"[[], {}, {}]", properties={"correlation_id": "no-hdrs"})
    letter = _good_and_bad(app, start_worker, bad)
    assert "InvalidTaskError" in letter.reason
    assert any(
        "no-hdrs" in r.getMessage() and "dead letters" in r.getMessage() for r in caplog.records
    )


def test_an_envelope_the_broker_could_not_read_says_so(app: Celeriac, start_worker: StartWorker):
    bad = Message(headers={}, body=b"\x00{not json", content_type=INVALID_ENVELOPE)
    letter = _good_and_bad(app, start_worker, bad)
    assert "invalid envelope" in letter.reason
    assert "accept_content" not in letter.reason


def test_a_message_that_keeps_killing_workers_is_dead_lettered(
    app: Celeriac, start_worker: StartWorker
):
    @app.task
    def deadly() -> None:
        pass

    result = deadly.delay()
    broker = app.broker
    dead = app.create_broker(consumer_id="dying")
    for _ in range(app.conf.task_redelivery_limit):
        [delivery] = dead.receive(["celery"], limit=1, timeout=1)
        broker.recover("dying", running=[delivery.tag])
    start_worker()
    with pytest.raises(WorkerLostError):
        result.get(timeout=5)
    [letter] = wait_for(lambda: dead_letters(app), timeout=5)
    assert "WorkerLostError" in letter.reason


def test_a_redelivered_copy_of_a_finished_task_is_dropped(app: Celeriac, start_worker: StartWorker):
    runs: list[int] = []

    @app.task
    def once() -> int:
        runs.append(1)
        return len(runs)

    result = once.delay()
    start_worker()
    assert result.get(timeout=5) == 1
    broker = app.broker
    # The same message comes back (a worker died after storing, before acking).
    call = TaskCall(name=once.name, id=result.id)
    broker.publish(encode_task(call), queue="celery")
    holder = app.create_broker(consumer_id="holder")
    wait_for(lambda: holder.receive(["celery"], limit=1, timeout=0.2), timeout=5)
    holder_broker = app.broker
    holder_broker.recover("holder")
    wait_for(lambda: app.broker.size("celery") == 0 and not leased(app), timeout=5)
    assert runs == [1]


def test_async_task_runs_on_the_worker(app: Celeriac, start_worker: StartWorker):
    import asyncio

    @app.task
    async def slow_add(x: int, y: int) -> int:
        await asyncio.sleep(0.01)
        return x + y

    start_worker()
    assert slow_add.delay(2, 5).get(timeout=5) == 7


def test_a_retry_goes_back_to_the_queue_it_came_from(app: Celeriac, start_worker: StartWorker):
    # A named exchange with its own routing key: the routing key is not a queue name.
    app.conf.task_routes = {
        "tests.routed": {"queue": "math", "exchange": "tasks", "routing_key": "m.add"}
    }
    runs: list[int] = []

    @app.task(name="tests.routed", bind=True, max_retries=1, default_retry_delay=0.05)
    def routed(self: Any) -> str:
        runs.append(self.request.retries)
        if self.request.retries == 0:
            raise self.retry()
        return "done"

    start_worker(queues=["math"])
    assert routed.delay().get(timeout=5) == "done"
    assert runs == [0, 1]


def test_a_revoked_task_is_not_run(app: Celeriac, start_worker: StartWorker):
    ran: list[str] = []

    @app.task
    def job(name: str) -> str:
        ran.append(name)
        return name

    doomed = job.delay("doomed")
    doomed.revoke()
    kept = job.delay("kept")
    start_worker()
    assert kept.get(timeout=5) == "kept"
    with pytest.raises(TaskRevokedError):
        doomed.get(timeout=5)
    wait_for(lambda: app.broker.size("celery") == 0 and not leased(app), timeout=5)
    assert ran == ["kept"]


def test_a_revoked_chain_step_fails_the_rest_of_the_chain(app: Celeriac, start_worker: StartWorker):
    from celeriac import chain

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = chain(add.s(1, 1), add.s(2), add.s(3))()
    assert result.parent is not None
    assert result.parent.parent is not None
    result.parent.parent.revoke()
    start_worker()
    with pytest.raises(TaskRevokedError):
        result.get(timeout=5)


def test_a_revoked_group_member_is_not_run(app: Celeriac, start_worker: StartWorker):
    from celeriac import group

    ran: list[int] = []

    @app.task
    def item(n: int) -> int:
        ran.append(n)
        return n

    result = group(item.s(n) for n in range(4))()
    result.revoke()
    start_worker()
    for member in result.results:
        with pytest.raises(TaskRevokedError):
            member.get(timeout=5)
    wait_for(lambda: app.broker.size("celery") == 0 and not leased(app), timeout=5)
    assert ran == []
