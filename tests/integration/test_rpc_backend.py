"""The rpc:// result backend (spec §4.6), alone and against stock Celery 5.7."""

from __future__ import annotations

import importlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import amqp
import pytest

from celeriac import states
from celeriac.backends import create_backend
from celeriac.backends.base import ResultMeta
from celeriac.backends.rpc import RPCBackend
from celeriac.exceptions import ResultTimeout
from tests.helpers import AMQP_URL, amqp_connection_args, require_rabbitmq

pytestmark = [pytest.mark.rabbitmq, pytest.mark.integration]

Factory = Callable[..., RPCBackend]


@pytest.fixture
def make() -> Iterator[Factory]:
    require_rabbitmq()
    made: list[RPCBackend] = []

    def factory(**options: Any) -> RPCBackend:
        options.setdefault("broker_url", AMQP_URL)
        backend = create_backend("rpc://", transport_options=options, expires=600)
        assert isinstance(backend, RPCBackend)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


def new_id() -> str:
    return str(uuid.uuid4())


def success(backend: RPCBackend, task_id: str, value: Any) -> ResultMeta:
    return backend.ready_meta(task_id, states.SUCCESS, value)


def test_a_result_stored_by_a_worker_reaches_the_waiting_client(make: Factory) -> None:
    client, worker = make(), make()
    client.ensure_reply_queue()
    task_id = new_id()
    timer = threading.Timer(
        0.3, lambda: worker.store(success(worker, task_id, {"sum": 4}), reply_to=client.reply_to)
    )
    timer.start()
    try:
        started = time.monotonic()
        meta = client.wait(task_id, timeout=10)
    finally:
        timer.cancel()
    assert meta.result == {"sum": 4}
    assert meta.status == states.SUCCESS
    assert meta.date_done is not None
    assert time.monotonic() - started < 3


def test_results_for_other_tasks_are_kept_until_asked_for(make: Factory) -> None:
    client, worker = make(), make()
    client.ensure_reply_queue()
    first, second = new_id(), new_id()
    worker.store(ResultMeta(task_id=first, status=states.STARTED), reply_to=client.reply_to)
    worker.store(success(worker, first, 1), reply_to=client.reply_to)
    worker.store(success(worker, second, 2), reply_to=client.reply_to)
    assert client.wait(second, timeout=5).result == 2
    meta = client.get(first)
    assert meta is not None
    assert (meta.status, meta.result) == (states.SUCCESS, 1)
    assert client.get_many([first, second, new_id()]).keys() == {first, second}


def test_a_final_state_is_not_replaced_by_a_later_one(make: Factory) -> None:
    client, worker = make(), make()
    client.ensure_reply_queue()
    task_id = new_id()
    worker.store(success(worker, task_id, "done"), reply_to=client.reply_to)
    worker.store(ResultMeta(task_id=task_id, status=states.STARTED), reply_to=client.reply_to)
    assert client.wait(task_id, timeout=5).result == "done"
    time.sleep(0.2)
    meta = client.get(task_id)
    assert meta is not None
    assert meta.status == states.SUCCESS


def test_wait_ignores_unready_states_and_times_out(make: Factory) -> None:
    backend = make()
    task_id = new_id()
    backend.ensure_reply_queue()
    backend.store(ResultMeta(task_id=task_id, status=states.STARTED))
    started = time.monotonic()
    with pytest.raises(ResultTimeout):
        backend.wait(task_id, timeout=0.5)
    assert time.monotonic() - started >= 0.45
    meta = backend.get(task_id)
    assert meta is not None
    assert meta.status == states.STARTED


def test_bodies_without_the_extended_fields_are_accepted(make: Factory) -> None:
    """Celery 5.5/5.6 sent only task_id/status/result/traceback/children; the
    correlation id names the task even when the body disagrees."""
    client = make()
    client.ensure_reply_queue()
    task_id = new_id()
    body = {
        "task_id": "ignored",
        "status": "SUCCESS",
        "result": 11,
        "traceback": None,
        "children": [],
    }
    conn = amqp.Connection(**amqp_connection_args())
    conn.connect()
    conn.channel().basic_publish(
        amqp.Message(
            json.dumps(body).encode(),
            content_type="application/json",
            content_encoding="utf-8",
            correlation_id=task_id,
        ),
        exchange="",
        routing_key=client.reply_to,
    )
    conn.close()
    meta = client.wait(task_id, timeout=5)
    assert (meta.status, meta.result, meta.date_done) == (states.SUCCESS, 11, None)


def test_two_threads_waiting_on_one_backend_both_get_their_result(make: Factory) -> None:
    client, worker = make(), make()
    client.ensure_reply_queue()
    ids = [new_id(), new_id()]
    results: dict[str, Any] = {}

    def waiter(task_id: str) -> None:
        results[task_id] = client.wait(task_id, timeout=10).result

    threads = [threading.Thread(target=waiter, args=(tid,)) for tid in ids]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    for n, task_id in enumerate(ids):
        worker.store(success(worker, task_id, n), reply_to=client.reply_to)
    for thread in threads:
        thread.join(15)
    assert results == {ids[0]: 0, ids[1]: 1}


def test_forget_drops_only_the_local_copy(make: Factory) -> None:
    backend = make()
    backend.ensure_reply_queue()
    task_id = new_id()
    backend.store(success(backend, task_id, 1))
    backend.wait(task_id, timeout=5)
    backend.forget(task_id)
    assert backend.get(task_id) is None


def test_groups_and_chords_are_refused_like_celery(make: Factory) -> None:
    backend = make()
    assert backend.supports_native_join is False
    with pytest.raises(NotImplementedError, match="does not support chords"):
        backend.ensure_chords_allowed()
    with pytest.raises(NotImplementedError, match="does not support chords"):
        backend.set_chord_size("g", 2)
    with pytest.raises(NotImplementedError, match="does not support chords"):
        backend.chord_part_return("g", index=0, task_id="t", status=states.SUCCESS, result=1)
    with pytest.raises(NotImplementedError, match="save_group"):
        backend.save_group("g", [])
    with pytest.raises(NotImplementedError):
        backend.get_group("g")
    with pytest.raises(NotImplementedError):
        backend.delete_group("g")


def test_the_reply_queue_is_declared_as_celery_declares_it(make: Factory) -> None:
    backend = make()
    backend.ensure_reply_queue()
    conn = amqp.Connection(**amqp_connection_args())
    conn.connect()
    # Celery 5.7 declares it durable, auto-delete, with x-expires = result_expires in
    # ms; the same declaration from another connection succeeds only if it matches.
    try:
        channel = conn.channel()
        channel.queue_declare(
            backend.reply_to,
            durable=True,
            exclusive=False,
            auto_delete=True,
            arguments={"x-expires": 600000},
        )
        # Never consumed from, so auto-delete would not remove it: delete it here.
        channel.queue_delete(backend.reply_to)
    finally:
        conn.close()


def stock_app() -> Any:
    celery: Any = importlib.import_module("celery")
    app = celery.Celery("rpcinterop", broker=AMQP_URL, backend="rpc://", set_as_current=False)
    app.conf.result_expires = 600
    return app


def test_a_stock_celery_client_reads_a_result_we_send(make: Factory) -> None:
    app = stock_app()
    task_id = new_id()
    with app.producer_or_acquire() as producer:
        app.backend.on_task_call(producer, task_id)  # declares its reply queue
    worker = make()
    worker.store(
        worker.ready_meta(task_id, states.SUCCESS, {"answer": [4, None]}), reply_to=app.thread_oid
    )
    result = app.AsyncResult(task_id)
    try:
        assert result.get(timeout=10) == {"answer": [4, None]}
        assert result.state == "SUCCESS"
    finally:
        app.backend.result_consumer.stop()
        app.close()


def test_we_read_a_result_a_stock_celery_worker_sends(make: Factory) -> None:
    app = stock_app()
    context: Any = importlib.import_module("celery.app.task").Context
    client = make()
    client.ensure_reply_queue()
    task_id = new_id()
    request = context(id=task_id, reply_to=client.reply_to, correlation_id=task_id)
    app.backend.store_result(task_id, {"x": 1.5}, states.SUCCESS, request=request)
    failure = new_id()
    app.backend.mark_as_failure(
        failure,
        ValueError("boom"),
        request=context(id=failure, reply_to=client.reply_to, correlation_id=failure),
        call_errbacks=False,
    )
    app.close()
    meta = client.wait(task_id, timeout=10)
    assert (meta.status, meta.result) == (states.SUCCESS, {"x": 1.5})
    failed = client.wait(failure, timeout=10)
    assert failed.status == states.FAILURE
    assert failed.result["exc_type"] == "ValueError"
    assert failed.result["exc_message"] == ["boom"]
