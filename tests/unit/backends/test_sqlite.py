"""The SQLite result backend beyond the shared contract: the stored record, expiry and
cleanup, the SUCCESS guard across objects, chords, waiting without polling, get_many."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from celeriac import states
from celeriac._time import FakeClock
from celeriac.backends import create_backend
from celeriac.backends.base import ResultMeta
from celeriac.backends.sqlite import SQLiteBackend
from celeriac.connections.sqlite_watch import watcher_for
from celeriac.exceptions import BackendError, ImproperlyConfigured, ResultTimeout

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "results.db"


@pytest.fixture
def made() -> Iterator[list[SQLiteBackend]]:
    backends: list[SQLiteBackend] = []
    yield backends
    for backend in backends:
        backend.close()


@pytest.fixture
def make(path: Path, made: list[SQLiteBackend]) -> Any:
    def factory(**kwargs: Any) -> SQLiteBackend:
        kwargs.setdefault("expires", 3600)
        backend = SQLiteBackend(f"sqlite:///{path}", **kwargs)
        made.append(backend)
        return backend

    return factory


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def test_the_url_forms_and_errors_match_the_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    backend = create_backend("sqlite:///relative.db")
    assert isinstance(backend, SQLiteBackend)
    try:
        backend.store(backend.ready_meta("t", states.SUCCESS, 1))
    finally:
        backend.close()
    assert (tmp_path / "relative.db").is_file()
    with pytest.raises(ImproperlyConfigured, match="names no database file"):
        SQLiteBackend("sqlite:///")
    missing = SQLiteBackend(f"sqlite:///{tmp_path / 'missing' / 'r.db'}")
    with pytest.raises(ImproperlyConfigured, match="does not exist"):
        missing.get("t")


def test_the_stored_row_is_celerys_record_in_the_result_serializer(make: Any, path: Path) -> None:
    backend = make()
    meta = backend.ready_meta(new_id(), states.SUCCESS, {"total": 4}, group_id="g-1")
    backend.store(meta)
    [(status, stored, expires_at)] = rows(path, "SELECT status, meta, expires_at FROM result")
    assert status == states.SUCCESS
    assert json.loads(stored) == meta.to_dict()
    assert expires_at == pytest.approx(time.time() + 3600, abs=5)


def test_msgpack_results_are_stored_as_msgpack(make: Any, path: Path) -> None:
    msgpack = pytest.importorskip("msgpack")
    backend = make(serializer="msgpack", accept=["msgpack"])
    meta = backend.ready_meta(new_id(), states.SUCCESS, [1, 2])
    backend.store(meta)
    [(stored,)] = rows(path, "SELECT meta FROM result")
    assert msgpack.unpackb(stored) == meta.to_dict()
    assert backend.get(meta.task_id) == meta


def test_expired_results_are_never_returned_and_cleanup_deletes_them(make: Any, path: Path) -> None:
    clock = FakeClock()
    backend = make(expires=10, clock=clock, transport_options={"cleanup_interval": 0})
    old, young = new_id(), new_id()
    backend.store(backend.ready_meta(old, states.SUCCESS, 1))
    clock.advance(6)
    backend.store(backend.ready_meta(young, states.SUCCESS, 2))
    backend.save_group("g", [["g", None], []])
    clock.advance(5)
    assert backend.get(old) is None
    assert list(backend.get_many([old, young])) == [young]
    assert rows(path, "SELECT count(*) FROM result") == [(2,)]  # still there, unseen
    assert backend.cleanup() == 1
    assert rows(path, "SELECT task_id FROM result") == [(young,)]
    clock.advance(10)
    assert backend.get_group("g") is None
    assert backend.cleanup() == 2


def test_store_cleans_up_expired_rows_now_and_then(make: Any, path: Path) -> None:
    clock = FakeClock()
    backend = make(expires=10, clock=clock, transport_options={"cleanup_interval": 60})
    for _ in range(5):
        backend.store(backend.ready_meta(new_id(), states.SUCCESS, 1))
    clock.advance(30)
    backend.store(backend.ready_meta(new_id(), states.SUCCESS, 1))
    assert rows(path, "SELECT count(*) FROM result") == [(6,)]  # too soon since the last
    clock.advance(31)
    backend.store(backend.ready_meta(new_id(), states.SUCCESS, 1))
    assert rows(path, "SELECT count(*) FROM result") == [(1,)]


def test_results_without_expiry_are_kept(make: Any, path: Path) -> None:
    clock = FakeClock()
    backend = make(expires=None, clock=clock)
    task_id = new_id()
    backend.store(backend.ready_meta(task_id, states.SUCCESS, 1))
    clock.advance(10 * 365 * 86400)
    assert backend.get(task_id) is not None
    assert backend.cleanup() == 0
    assert rows(path, "SELECT expires_at FROM result") == [(None,)]


def test_a_success_is_final_across_processes_until_it_expires(make: Any) -> None:
    clock = FakeClock()
    worker = make(expires=10, clock=clock)
    duplicate = make(expires=10, clock=clock)  # another process, its own connection
    task_id = new_id()
    worker.store(worker.ready_meta(task_id, states.SUCCESS, "first"))
    duplicate.store(duplicate.ready_meta(task_id, states.FAILURE, {"exc_type": "X"}))
    duplicate.store(ResultMeta(task_id=task_id, status=states.STARTED))
    meta = worker.get(task_id)
    assert meta is not None
    assert (meta.status, meta.result) == (states.SUCCESS, "first")
    clock.advance(11)
    duplicate.store(ResultMeta(task_id=task_id, status=states.STARTED))
    meta = worker.get(task_id)
    assert meta is not None
    assert meta.status == states.STARTED


def test_a_store_is_one_statement(make: Any) -> None:
    backend = make(transport_options={"cleanup_interval": 0})
    backend.get(new_id())  # open this thread's connection
    seen: list[str] = []
    with backend._db.use() as connection:
        connection.set_trace_callback(seen.append)
    backend.store(backend.ready_meta(new_id(), states.SUCCESS, 1))
    assert len(seen) == 1
    assert seen[0].startswith("INSERT INTO result")


def test_get_many_is_one_query_for_any_number_of_ids(make: Any) -> None:
    backend = make()
    ids = [new_id() for _ in range(2500)]  # more than SQLite's classic 999 parameters
    for task_id in ids[::2]:
        backend.store(backend.ready_meta(task_id, states.SUCCESS, task_id[:4]))
    seen: list[str] = []
    with backend._db.use() as connection:
        connection.set_trace_callback(seen.append)
    found = backend.get_many(ids)
    assert len(seen) == 1
    assert list(found) == ids[::2]
    assert all(found[task_id].result == task_id[:4] for task_id in ids[::2])


def test_wait_wakes_soon_after_a_store_and_does_not_poll(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = make()
    reader = make()
    task_id = new_id()
    reads = 0
    original = reader.get

    def counting_get(tid: str) -> ResultMeta | None:
        nonlocal reads
        reads += 1
        meta: ResultMeta | None = original(tid)
        return meta

    monkeypatch.setattr(reader, "get", counting_get)
    stored_at = 0.0

    def store() -> None:
        nonlocal stored_at
        writer.store(writer.ready_meta(task_id, states.SUCCESS, 42))
        stored_at = time.monotonic()

    timer = threading.Timer(1.0, store)
    timer.start()
    try:
        meta = reader.wait(task_id, timeout=10)
        woke_at = time.monotonic()
    finally:
        timer.cancel()
        timer.join()
    assert meta.result == 42
    assert woke_at - stored_at < 0.5
    # A second of waiting cost a handful of reads (first look, the watcher's first
    # reading, the store), not one per poll interval.
    assert reads <= 5


def test_wait_raises_result_timeout_on_time(make: Any) -> None:
    backend = make()
    task_id = new_id()
    backend.store(ResultMeta(task_id=task_id, status=states.STARTED))
    started = time.monotonic()
    with pytest.raises(ResultTimeout, match=task_id):
        backend.wait(task_id, timeout=0.4)
    assert 0.35 <= time.monotonic() - started < 2


def test_wait_many_returns_in_the_order_asked(make: Any) -> None:
    writer = make()
    reader = make()
    ids = [new_id() for _ in range(4)]

    watcher = watcher_for(reader.path, interval=reader.polling_interval)

    def store_all() -> None:
        for n, task_id in enumerate(reversed(ids)):
            token = watcher.token()
            writer.store(writer.ready_meta(task_id, states.SUCCESS, n))
            watcher.wait(token, 5)  # the reader's watcher saw it: one result at a time

    timer = threading.Timer(0.2, store_all)
    timer.start()
    try:
        done = reader.wait_many(ids, timeout=10)
    finally:
        timer.cancel()
        timer.join()
    assert list(done) == ids
    assert [done[task_id].result for task_id in ids] == [3, 2, 1, 0]
    with pytest.raises(ResultTimeout, match="1 of 2 tasks"):
        reader.wait_many([ids[0], new_id()], timeout=0.2)


def test_a_chord_part_arriving_after_the_join_is_not_joined_again(make: Any) -> None:
    backend = make()
    group_id = new_id()
    backend.set_chord_size(group_id, 2)
    backend.chord_part_return(group_id, index=1, task_id="b", status=states.SUCCESS, result=2)
    parts = backend.chord_part_return(
        group_id, index=0, task_id="a", status=states.SUCCESS, result=1
    )
    assert parts is not None
    assert [(p.index, p.task_id) for p in parts] == [(0, "a"), (1, "b")]
    late = backend.chord_part_return(
        group_id, index=1, task_id="b", status=states.SUCCESS, result=2
    )
    assert late is None


def test_chord_parts_without_an_index_come_last(make: Any) -> None:
    backend = make()
    group_id = new_id()
    backend.set_chord_size(group_id, 3)
    backend.chord_part_return(group_id, index=None, task_id="x", status=states.SUCCESS, result=9)
    backend.chord_part_return(group_id, index=1, task_id="b", status=states.SUCCESS, result=2)
    parts = backend.chord_part_return(
        group_id, index=0, task_id="a", status=states.SUCCESS, result=1
    )
    assert parts is not None
    assert [p.result for p in parts] == [1, 2, 9]


def test_a_chord_joins_across_backend_objects_in_header_order(make: Any) -> None:
    backends = [make() for _ in range(3)]
    group_id = new_id()
    backends[0].set_chord_size(group_id, 3)
    results = [
        backends[n].chord_part_return(
            group_id, index=n, task_id=f"t{n}", status=states.SUCCESS, result={"n": n}
        )
        for n in (2, 0, 1)
    ]
    assert results[:2] == [None, None]
    assert results[2] is not None
    assert [p.result for p in results[2]] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_driver_errors_come_out_as_backend_errors(make: Any, path: Path) -> None:
    backend = make()
    backend.get(new_id())
    connection = sqlite3.connect(path)
    connection.execute("DROP TABLE chord")
    connection.close()
    with pytest.raises(BackendError, match="no such table: chord") as info:
        backend.set_chord_size(new_id(), 2)
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
