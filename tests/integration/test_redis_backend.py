"""Redis result backend: Celery's keys and JSON, pub/sub waits, chord keys, and results
read and written both ways with stock Celery 5.7's RedisBackend (no worker needed)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import celery
import pytest
import redis
from celery.result import AsyncResult, GroupResult

from celeriac import states
from celeriac.backends import create_backend
from celeriac.backends.base import ResultMeta
from celeriac.backends.redis import RedisBackend
from celeriac.protocol.errors import decode_exception, encode_exception
from tests.helpers import REDIS_URL, require_redis, unique, wait_for
from tests.integration.interop_redis import close_stock_app

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = pytest.mark.redis

TYPED = {
    "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    "amount": Decimal("1.50"),
    "ref": uuid.UUID(int=1),
}


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    require_redis()
    connection = redis.Redis.from_url(REDIS_URL)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def prefix(client: redis.Redis) -> Iterator[str]:
    value = unique("rr") + ":"
    yield value
    keys = list(client.scan_iter(match=f"{value}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def make_backend(prefix: str) -> Iterator[Callable[..., RedisBackend]]:
    made: list[RedisBackend] = []

    def make(**kwargs: Any) -> RedisBackend:
        options = {"global_keyprefix": prefix, **kwargs.pop("options", {})}
        kwargs.setdefault("expires", 3600)
        backend = create_backend(REDIS_URL, transport_options=options, **kwargs)
        assert isinstance(backend, RedisBackend)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture(scope="module")
def stock(prefix: str) -> Iterator[Any]:
    app = celery.Celery("interop", set_as_current=False)
    app.conf.result_backend = REDIS_URL
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    app.conf.result_expires = 3600
    yield app.backend
    close_stock_app(app)


# Stock Celery 5.7 calls redis-py's deprecated setex(); that warning is theirs, not ours.
stock_warnings = pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")


def new_id() -> str:
    return str(uuid.uuid4())


# -- layout ------------------------------------------------------------------------------


def test_result_is_celerys_json_with_setex_and_publish(make_backend, client, prefix) -> None:
    backend = make_backend(expires=600)
    task_id = new_id()
    key = f"{prefix}celery-task-meta-{task_id}"
    pubsub = client.pubsub()
    pubsub.subscribe(key)
    wait_for(lambda: pubsub.get_message(timeout=0.1), timeout=5)  # subscribe confirmation
    backend.store(backend.ready_meta(task_id, states.SUCCESS, 4, group_id="g"))
    stored = client.get(key)
    assert stored is not None
    data = json.loads(stored)
    assert list(data) == [
        "status",
        "result",
        "traceback",
        "children",
        "date_done",
        "group_id",
        "task_id",
    ]
    assert (data["status"], data["result"], data["task_id"]) == ("SUCCESS", 4, task_id)
    assert 590 <= client.ttl(key) <= 600
    message = wait_for(lambda: pubsub.get_message(timeout=0.2), timeout=5)
    assert message["channel"] == key.encode()
    assert message["data"] == stored
    pubsub.close()


def test_results_without_expiry_are_kept(make_backend, client, prefix) -> None:
    backend = make_backend(expires=None)
    task_id = new_id()
    backend.store(backend.ready_meta(task_id, states.SUCCESS, 1))
    assert client.ttl(f"{prefix}celery-task-meta-{task_id}") == -1


@pytest.mark.parametrize(
    ("configured", "expected"),
    [("app", "app_"), ("app:", "app:"), ("app-", "app-"), ("app.", "app."), ("app_", "app_")],
)
def test_global_keyprefix_follows_celerys_rule(client, configured, expected) -> None:
    require_redis()
    configured = f"{unique('p')}{configured}"
    expected = configured if configured[-1] in ":_-." else f"{configured}_"
    backend = create_backend(REDIS_URL, transport_options={"global_keyprefix": configured})
    task_id = new_id()
    try:
        backend.store(backend.ready_meta(task_id, states.SUCCESS, 1))
        assert client.exists(f"{expected}celery-task-meta-{task_id}")
    finally:
        client.delete(f"{expected}celery-task-meta-{task_id}")
        backend.close()


def test_group_is_stored_as_celery_stores_it(make_backend, client, prefix) -> None:
    backend = make_backend()
    group_id = new_id()
    as_tuple = [[group_id, None], [[["a", None], None]]]
    backend.save_group(group_id, as_tuple)
    stored = client.get(f"{prefix}celery-taskset-meta-{group_id}")
    assert stored is not None
    assert json.loads(stored) == {"result": as_tuple}


def test_chord_keys_follow_celery(make_backend, client, prefix) -> None:
    backend = make_backend(expires=900)
    group_id = new_id()
    base = f"{prefix}celery-taskset-meta-{group_id}"
    backend.set_chord_size(group_id, 2)
    assert client.get(f"{base}.s") == b"2"
    assert 890 <= client.ttl(f"{base}.s") <= 900
    assert (
        backend.chord_part_return(
            group_id, index=1, task_id="t1", status=states.SUCCESS, result={"x": 1}
        )
        is None
    )
    [(member, score)] = client.zrange(f"{base}.j", 0, -1, withscores=True)
    assert json.loads(member) == [1, "t1", "SUCCESS", {"x": 1}]
    assert score == 1
    assert client.smembers(f"{base}.d") == {b"t1:1"}
    parts = backend.chord_part_return(
        group_id, index=0, task_id="t0", status=states.SUCCESS, result=None
    )
    assert parts is not None
    assert [p.task_id for p in parts] == ["t0", "t1"]
    assert not client.exists(f"{base}.j", f"{base}.s", f"{base}.d")
    assert client.get(f"{base}.c") == b"done"
    # A late duplicate after the chord fired does not recreate its state.
    assert (
        backend.chord_part_return(
            group_id, index=0, task_id="t0", status=states.SUCCESS, result=None
        )
        is None
    )
    assert not client.exists(f"{base}.j")


def test_unordered_chords_use_a_list(make_backend, client, prefix) -> None:
    backend = make_backend(options={"result_chord_ordered": False})
    group_id = new_id()
    backend.set_chord_size(group_id, 2)
    backend.chord_part_return(group_id, index=5, task_id="a", status=states.SUCCESS, result=1)
    assert client.type(f"{prefix}celery-taskset-meta-{group_id}.j") == b"list"
    parts = backend.chord_part_return(
        group_id, index=None, task_id="b", status=states.SUCCESS, result=2
    )
    assert parts is not None
    assert [p.result for p in parts] == [1, 2]


# -- waiting -----------------------------------------------------------------------------


def test_wait_is_notified_not_polling(make_backend, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = make_backend()
    writer = make_backend()
    task_id = new_id()
    reads: list[int] = []
    original = reader._read_and_subscribe

    def counting(*args: Any) -> Any:
        reads.append(1)
        return original(*args)

    monkeypatch.setattr(reader, "_read_and_subscribe", counting)
    timer = threading.Timer(1.0, lambda: writer.store(writer.ready_meta(task_id, "SUCCESS", 3)))
    timer.start()
    try:
        started = time.monotonic()
        meta = reader.wait(task_id, timeout=10)
    finally:
        timer.cancel()
    assert meta.result == 3
    assert time.monotonic() - started < 3
    assert len(reads) == 1  # one read-and-subscribe, then the notification


def test_wait_many_collects_results_as_they_are_published(make_backend) -> None:
    reader = make_backend()
    writer = make_backend()
    ids = [new_id() for _ in range(5)]
    writer.store(writer.ready_meta(ids[0], states.SUCCESS, 0))

    def write_rest() -> None:
        for n, task_id in enumerate(ids[1:], start=1):
            time.sleep(0.05)
            writer.store(writer.ready_meta(task_id, states.SUCCESS, n))

    thread = threading.Thread(target=write_rest)
    thread.start()
    done = reader.wait_many(ids, timeout=10)
    thread.join()
    assert [done[task_id].result for task_id in ids] == [0, 1, 2, 3, 4]


def test_a_result_stored_between_the_pieces_of_a_long_wait_is_not_missed(
    make_backend, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis may read a long write in pieces and run other clients' commands between
    them: a result stored and published after the piece with the MGET ran but before
    the SUBSCRIBE arrived must still reach the reader (here the gap is made on purpose)."""
    name = unique("gap")
    reader = make_backend(options={"client_name": name})
    writer = make_backend()
    ids = [new_id() for _ in range(50)]
    for n, task_id in enumerate(ids[:-1]):
        writer.store(writer.ready_meta(task_id, states.SUCCESS, n))
    original = reader._subscriber
    split: list[bool] = []

    def last_command() -> str | None:
        for entry in client.client_list():
            if entry.get("name") == name:
                return str(entry.get("cmd"))
        return None

    def subscriber() -> Any:
        conn = original()
        send = conn.send_packed_command

        def send_in_two_pieces(packed: list[bytes], *args: Any) -> None:
            if split:
                send(packed, *args)
                return
            split.append(True)
            data = b"".join(packed)
            cut = data.index(b"\r\nSUBSCRIBE\r\n")
            cut = data.rindex(b"*", 0, cut)  # the SUBSCRIBE command's first byte
            conn._sock.sendall(data[:cut])
            wait_for(lambda: last_command() == "mget", timeout=5, what="the MGET alone")
            writer.store(writer.ready_meta(ids[-1], states.SUCCESS, "in the gap"))
            conn._sock.sendall(data[cut:])

        conn.send_packed_command = send_in_two_pieces
        return conn

    monkeypatch.setattr(reader, "_subscriber", subscriber)
    done = reader.wait_many(ids, timeout=5)
    assert split
    assert [done[task_id].result for task_id in ids] == [*range(49), "in the gap"]


def test_a_dropped_subscription_reconnects_and_reads_again(make_backend, client) -> None:
    name = unique("sub")
    reader = make_backend(options={"client_name": name})
    writer = make_backend()
    task_id = new_id()
    result: list[ResultMeta] = []
    thread = threading.Thread(target=lambda: result.append(reader.wait(task_id, timeout=20)))
    thread.start()

    def subscriber_id() -> int | None:
        for entry in client.client_list():
            if entry.get("name") == name and entry.get("cmd") in ("subscribe", "unsubscribe"):
                return int(entry["id"])
        return None

    victim = wait_for(subscriber_id, timeout=10, what="the waiting subscriber")
    # The result lands while the subscriber is gone: only the re-GET can see it.
    with client.pipeline() as pipe:
        pipe.client_kill_filter(_id=victim)
        pipe.execute()
    writer.store(writer.ready_meta(task_id, states.SUCCESS, "late"))
    thread.join(25)
    assert [meta.result for meta in result] == ["late"]


# -- stock Celery interop ----------------------------------------------------------------------


@stock_warnings
def test_we_read_what_stock_celery_writes(make_backend, stock) -> None:
    backend = make_backend()
    ok_id, bad_id = new_id(), new_id()
    stock.store_result(ok_id, TYPED, states.SUCCESS)
    stock.mark_as_failure(bad_id, ValueError("boom", 3), traceback="Traceback: ...")
    ok = backend.get(ok_id)
    assert ok is not None
    assert (ok.status, ok.result) == (states.SUCCESS, TYPED)
    bad = backend.get(bad_id)
    assert bad is not None
    assert bad.status == states.FAILURE
    assert bad.traceback == "Traceback: ..."
    error = decode_exception(bad.result)
    assert isinstance(error, ValueError)
    assert error.args == ("boom", 3)
    assert backend.wait(ok_id, timeout=1).result == TYPED


@stock_warnings
def test_stock_celery_reads_what_we_write(make_backend, stock) -> None:
    backend = make_backend()
    ok_id, bad_id = new_id(), new_id()
    backend.store(backend.ready_meta(ok_id, states.SUCCESS, TYPED))
    backend.store(
        backend.ready_meta(bad_id, states.FAILURE, encode_exception(KeyError("k")), traceback="tb")
    )
    assert AsyncResult(ok_id, backend=stock).get(timeout=5) == TYPED
    failed = AsyncResult(bad_id, backend=stock)
    with pytest.raises(KeyError):
        failed.get(timeout=5)
    assert failed.traceback == "tb"


@stock_warnings
def test_stock_get_wakes_on_our_publish(make_backend, stock) -> None:
    backend = make_backend()
    task_id = new_id()
    timer = threading.Timer(0.5, lambda: backend.store(backend.ready_meta(task_id, "SUCCESS", 9)))
    timer.start()
    try:
        assert AsyncResult(task_id, backend=stock).get(timeout=10) == 9
    finally:
        timer.cancel()


@stock_warnings
def test_a_stock_success_is_final_for_us(make_backend, stock) -> None:
    backend = make_backend()
    task_id = new_id()
    stock.store_result(task_id, 1, states.SUCCESS)
    backend.store(ResultMeta(task_id=task_id, status=states.STARTED))
    meta = backend.get(task_id)
    assert meta is not None
    assert meta.status == states.SUCCESS


@stock_warnings
def test_groups_cross_both_ways(make_backend, stock) -> None:
    backend = make_backend()
    app = stock.app
    ours_id, theirs_id = new_id(), new_id()
    backend.save_group(ours_id, [[ours_id, None], [[["a", None], None], [["b", None], None]]])
    restored = GroupResult.restore(ours_id, backend=stock, app=app)
    assert [r.id for r in restored.results] == ["a", "b"]
    theirs = GroupResult(theirs_id, [AsyncResult("c", app=app)], app=app)
    stock.save_group(theirs_id, theirs)
    assert backend.get_group(theirs_id) == [[theirs_id, None], [[["c", None], None]]]


@stock_warnings
def test_chord_parts_mix_with_stock_workers(make_backend, stock, prefix) -> None:
    backend = make_backend()
    group_id = new_id()
    backend.set_chord_size(group_id, 3)
    # Two parts reported by us, the last by a stock 5.7 worker's own script.
    backend.chord_part_return(group_id, index=2, task_id="t2", status="SUCCESS", result=TYPED)
    backend.chord_part_return(group_id, index=0, task_id="t0", status="SUCCESS", result=0)
    keys = [stock.get_key_for_group(group_id, s) for s in (".j", ".t", ".s", ".d")]
    keys += [stock.get_key_for_group(group_id), stock.get_key_for_group(group_id, ".c")]
    encoded = stock.encode([1, "t1", "SUCCESS", stock.encode_result(1, "SUCCESS")])
    ready, _, size, claimed = stock._chord_part_return_script(
        keys=keys, args=["t1", encoded, 1, 1, 3600, 3600, 10, "token"], client=stock.client
    )
    assert (ready, int(size), claimed) == (3, 3, 1)
    members = stock.client.zrange(keys[0], 0, -1)
    values = [stock._unpack_chord_result(m, stock.decode) for m in members]
    assert values == [0, 1, TYPED]


@stock_warnings
def test_we_complete_a_chord_stock_workers_started(make_backend, stock) -> None:
    backend = make_backend()
    group_id = new_id()
    stock.set_chord_size(group_id, 2)
    keys = [stock.get_key_for_group(group_id, s) for s in (".j", ".t", ".s", ".d")]
    keys += [stock.get_key_for_group(group_id), stock.get_key_for_group(group_id, ".c")]
    encoded = stock.encode(
        [
            1,
            "t0",
            "FAILURE",
            {"exc_type": "ValueError", "exc_message": ["x"], "exc_module": "builtins"},
        ]
    )
    stock._chord_part_return_script(
        keys=keys, args=["t0", encoded, 1, 0, 3600, 3600, 10, "token"], client=stock.client
    )
    parts = backend.chord_part_return(group_id, index=1, task_id="t1", status="SUCCESS", result=5)
    assert parts is not None
    assert [(p.task_id, p.status) for p in parts] == [("t0", "FAILURE"), ("t1", "SUCCESS")]
    assert parts[0].result["exc_type"] == "ValueError"
