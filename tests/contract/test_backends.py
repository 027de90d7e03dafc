"""The result backend contract (see `celeriac/backends/base.py`), on every implementation."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING

import pytest

from celeriac import states
from celeriac._time import FakeClock
from celeriac.backends.base import ResultMeta
from celeriac.exceptions import ResultTimeout
from tests.helpers import wait_for

if TYPE_CHECKING:
    from tests.contract.conftest import BackendFactory


def new_id() -> str:
    return str(uuid.uuid4())


def test_stored_result_reads_back(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    task_id = new_id()
    backend.store(backend.ready_meta(task_id, states.SUCCESS, {"total": 4}, parent_id="p-1"))
    meta = backend.get(task_id)
    assert meta is not None
    assert meta.status == states.SUCCESS
    assert meta.result == {"total": 4}
    assert meta.parent_id == "p-1"
    assert meta.date_done is not None
    assert meta.task_id == task_id


def test_unknown_id_reads_as_none(backend_factory: BackendFactory) -> None:
    assert backend_factory().get(new_id()) is None


def test_typed_values_survive_the_round_trip(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    task_id = new_id()
    value = {
        "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        "amount": Decimal("1.50"),
        "ref": uuid.UUID(int=1),
        "raw": b"\xff\x00",
    }
    backend.store(backend.ready_meta(task_id, states.SUCCESS, value))
    meta = backend.get(task_id)
    assert meta is not None
    assert meta.result == value


def test_a_stored_success_is_final(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    task_id = new_id()
    backend.store(backend.ready_meta(task_id, states.SUCCESS, 1))
    backend.store(ResultMeta(task_id=task_id, status=states.STARTED))
    meta = backend.get(task_id)
    assert meta is not None
    assert (meta.status, meta.result) == (states.SUCCESS, 1)


def test_later_states_replace_earlier_ones(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    task_id = new_id()
    backend.store(ResultMeta(task_id=task_id, status=states.STARTED, result={"pid": 1}))
    backend.store(
        backend.ready_meta(
            task_id,
            states.FAILURE,
            {"exc_type": "ValueError", "exc_message": ["x"], "exc_module": "builtins"},
        )
    )
    meta = backend.get(task_id)
    assert meta is not None
    assert meta.status == states.FAILURE
    assert meta.result["exc_type"] == "ValueError"


def test_forget_deletes_the_result(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    task_id = new_id()
    backend.store(backend.ready_meta(task_id, states.SUCCESS, 1))
    backend.forget(task_id)
    assert backend.get(task_id) is None


def test_wait_returns_when_another_thread_stores(backend_factory: BackendFactory) -> None:
    writer = backend_factory()
    reader = backend_factory()
    task_id = new_id()
    timer = threading.Timer(
        0.3, lambda: writer.store(writer.ready_meta(task_id, states.SUCCESS, 42))
    )
    timer.start()
    try:
        started = time.monotonic()
        meta = reader.wait(task_id, timeout=10)
    finally:
        timer.cancel()
    assert meta.result == 42
    assert time.monotonic() - started < 3


def test_wait_ignores_unready_states(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    task_id = new_id()
    backend.store(ResultMeta(task_id=task_id, status=states.STARTED))
    with pytest.raises(ResultTimeout):
        backend.wait(task_id, timeout=0.3)


def test_wait_times_out(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    started = time.monotonic()
    with pytest.raises(ResultTimeout):
        backend.wait(new_id(), timeout=0.3)
    assert time.monotonic() - started >= 0.25


def test_wait_many_returns_every_result(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    ids = [new_id() for _ in range(5)]
    for n, task_id in enumerate(ids):
        backend.store(backend.ready_meta(task_id, states.SUCCESS, n))
    done = backend.wait_many(ids, timeout=5)
    assert [done[task_id].result for task_id in ids] == list(range(5))


def test_async_wait_returns_when_another_thread_stores(backend_factory: BackendFactory) -> None:
    writer = backend_factory()
    reader = backend_factory()
    ready, waiting = new_id(), new_id()
    writer.store(writer.ready_meta(ready, states.SUCCESS, 1))
    writer.store(ResultMeta(task_id=waiting, status=states.STARTED))

    async def main() -> dict[str, ResultMeta]:
        timer = threading.Timer(
            0.3, lambda: writer.store(writer.ready_meta(waiting, states.SUCCESS, 2))
        )
        timer.start()
        try:
            return await reader.wait_many_async([ready, waiting], timeout=10)
        finally:
            timer.cancel()

    done = asyncio.run(main())
    assert {task_id: meta.result for task_id, meta in done.items()} == {ready: 1, waiting: 2}


def test_async_wait_times_out(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    task_id = new_id()
    backend.store(ResultMeta(task_id=task_id, status=states.STARTED))
    with pytest.raises(ResultTimeout, match=task_id):
        asyncio.run(backend.wait_many_async([task_id], timeout=0.3))


def test_get_many_leaves_out_unknown_ids(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    known = new_id()
    backend.store(backend.ready_meta(known, states.SUCCESS, "x"))
    found = backend.get_many([known, new_id()])
    assert list(found) == [known]


def test_groups_are_saved_read_and_deleted(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    group_id = new_id()
    as_tuple = [[group_id, None], [[["a", None], None], [["b", None], None]]]
    backend.save_group(group_id, as_tuple)
    assert backend.get_group(group_id) == as_tuple
    backend.delete_group(group_id)
    assert backend.get_group(group_id) is None


def test_chord_joins_once_in_header_order(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    group_id = new_id()
    backend.set_chord_size(group_id, 5)
    order = list(range(5))
    random.shuffle(order)
    results = []
    for index in order:
        results.append(
            backend.chord_part_return(
                group_id, index=index, task_id=f"t{index}", status=states.SUCCESS, result=index * 10
            )
        )
    assert results[:-1] == [None] * 4
    parts = results[-1]
    assert parts is not None
    assert [p.result for p in parts] == [0, 10, 20, 30, 40]
    assert [p.task_id for p in parts] == [f"t{i}" for i in range(5)]


def test_chord_counts_a_redelivered_part_once(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    group_id = new_id()
    backend.set_chord_size(group_id, 2)
    first = backend.chord_part_return(
        group_id, index=0, task_id="t0", status=states.SUCCESS, result=1
    )
    again = backend.chord_part_return(
        group_id, index=0, task_id="t0", status=states.SUCCESS, result=1
    )
    assert first is None
    assert again is None
    done = backend.chord_part_return(
        group_id, index=1, task_id="t1", status=states.SUCCESS, result=2
    )
    assert done is not None
    assert [p.result for p in done] == [1, 2]


def test_chord_join_is_atomic_under_concurrency(backend_factory: BackendFactory) -> None:
    group_id = new_id()
    size = 40
    backends = [backend_factory() for _ in range(4)]
    backends[0].set_chord_size(group_id, size)
    completions: list[object] = []
    lock = threading.Lock()

    def report(worker: int) -> None:
        backend = backends[worker]
        for index in range(worker, size, len(backends)):
            parts = backend.chord_part_return(
                group_id, index=index, task_id=f"t{index}", status=states.SUCCESS, result=index
            )
            if parts is not None:
                with lock:
                    completions.append(parts)

    threads = [threading.Thread(target=report, args=(n,)) for n in range(len(backends))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(completions) == 1
    assert [p.result for p in completions[0]] == list(range(size))  # type: ignore[attr-defined]


def test_chord_parts_keep_failures(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    group_id = new_id()
    backend.set_chord_size(group_id, 2)
    error = {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}
    backend.chord_part_return(group_id, index=0, task_id="bad", status=states.FAILURE, result=error)
    parts = backend.chord_part_return(
        group_id, index=1, task_id="good", status=states.SUCCESS, result=3
    )
    assert parts is not None
    assert parts[0].status == states.FAILURE
    assert parts[0].result == error


def test_results_expire(backend_factory: BackendFactory) -> None:
    clock = FakeClock(time.time())
    backend = backend_factory(expires=1, clock=clock)
    task_id = new_id()
    backend.store(backend.ready_meta(task_id, states.SUCCESS, 1))
    assert backend.get(task_id) is not None
    clock.advance(1.3)

    def gone() -> bool:
        backend.cleanup()
        return backend.get(task_id) is None

    # Redis expires keys by its own clock, a second after the store.
    assert wait_for(gone, timeout=5)


def test_revocations_are_logged_and_read_since_a_cursor(backend_factory: BackendFactory) -> None:
    clock = FakeClock(time.time())
    writer = backend_factory(clock=clock)
    reader = backend_factory(clock=clock)
    if not writer.supports_revocation:
        pytest.fail(f"{type(writer).__name__} must keep a revocation log")
    start = clock.time() - 1
    writer.revoke(["a", "b"])
    writer.revoke(["c"], terminate=True)
    found, cursor = reader.revoked_since(start)
    assert {r.task_id: r.terminate for r in found} == {"a": False, "b": False, "c": True}
    assert cursor >= start
    clock.advance(0.01)
    writer.revoke(["d"])
    newer, _ = reader.revoked_since(cursor)
    assert "d" in {r.task_id for r in newer}
    assert "a" not in {r.task_id for r in newer if r.at < cursor}


def test_recent_lists_the_newest_results_first(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    if not backend.supports_recent:
        with pytest.raises(NotImplementedError):
            backend.recent(10)
        return
    base = datetime.now(timezone.utc)
    ids = [new_id() for _ in range(4)]
    for offset, task_id in enumerate(ids):
        done = base.replace(microsecond=0) + timedelta(seconds=offset)
        backend.store(
            ResultMeta(task_id=task_id, status=states.SUCCESS, result=offset, date_done=done)
        )
    backend.forget(ids[0])
    newest = backend.recent(2)
    assert [meta.task_id for meta in newest] == [ids[3], ids[2]]
    assert newest[0].result == 3
    assert [meta.task_id for meta in backend.recent(10)] == [ids[3], ids[2], ids[1]]
    with pytest.raises(ValueError, match="limit"):
        backend.recent(0)
