"""celeriac producers feed a stock Celery 5.7 worker (`celery -A stockproj worker`) on
Redis, and celeriac's `AsyncResult` / `GroupResult` read what it stored.

One stock worker (solo pool, prefetch 1) serves the module. ETA tasks follow the rule
docs/redis.md gives for mixed fleets: while no celeriac consumer is alive (by the presence
records) a celeriac producer pushes ETA messages straight to the list as kombu does;
while one is, they wait in Redis until it promotes them (any queue's consumer promotes
every queue), and then a stock worker runs them; the delayed set is handed to the lists
when the last celeriac worker leaves, or by the next celeriac producer after a dead one.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis

from celeriac import Celeriac, chain, chord, group
from celeriac.result import AsyncResult, GroupResult
from tests.helpers import require_redis, unique, wait_for
from tests.integration.conftest import RunWorker, write_tasks
from tests.integration.interop_redis import Shared, StockWorker, import_module, stock_worker

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.redis]

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    url = require_redis()
    name = unique("iw")
    place = Shared(url=url, prefix=f"{name}:", queue=name)
    yield place
    place.delete_keys()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, shared: Shared) -> Path:
    directory: Path = tmp_path_factory.mktemp("stock")
    (directory / "stockproj.py").write_text(shared.celery_source())
    (directory / "ours.py").write_text(shared.celeriac_source())
    return directory


@pytest.fixture(scope="module")
def celery_worker(home: Path) -> Iterator[StockWorker]:
    with stock_worker(home, "stockproj", "-P", "solo") as running:
        yield running


@pytest.fixture(scope="module")
def ours(home: Path) -> Iterator[Any]:
    """The celeriac app (same task names) in this process: the producer."""
    module = import_module(home, "ours")
    yield module
    module.app.close()


@pytest.fixture
def t(ours: Any, celery_worker: StockWorker) -> Iterator[Any]:
    celery_worker.assert_healthy()
    yield ours
    celery_worker.assert_healthy()


@pytest.fixture
def client(shared: Shared) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(shared.url)
    yield connection
    connection.close()


def test_delay_runs_on_the_stock_worker(t: Any, celery_worker: StockWorker) -> None:
    result = t.whoami.delay("hello")
    assert isinstance(result, AsyncResult)
    value = result.get(timeout=TIMEOUT)
    assert value["impl"] == "celery", celery_worker.tail()
    assert value["pid"] == celery_worker.process.pid
    assert value["tag"] == "hello"
    assert result.state == "SUCCESS"
    assert t.add.delay(2, 2).get(timeout=TIMEOUT) == 4


def test_priorities_are_served_in_redis_order(t: Any, shared: Shared, client: redis.Redis) -> None:
    blocker = t.nap.delay(1.0, "blocker")
    # The stock worker (one slot, prefetch 1) has taken the blocker off the list.
    wait_for(lambda: client.llen(shared.prefix + shared.queue) == 0, timeout=5, what="blocker")
    results = {p: t.nap.apply_async((0, f"p{p}"), priority=p) for p in (9, 0, 6, 3)}
    blocker.get(timeout=TIMEOUT)
    started = {p: r.get(timeout=TIMEOUT)["at"] for p, r in results.items()}
    assert sorted(started, key=started.__getitem__) == [0, 3, 6, 9]


def test_link_calls_the_callback(t: Any) -> None:
    callback = t.mul.s(10)
    callback.freeze()
    result = t.add.apply_async((2, 3), link=callback)
    assert result.get(timeout=TIMEOUT) == 5
    assert callback.id is not None
    assert t.app.AsyncResult(callback.id).get(timeout=TIMEOUT) == 50


def test_chain_runs_step_by_step(t: Any) -> None:
    result = chain(t.add.s(2, 2), t.mul.s(10), t.add.s(1))()
    assert result.get(timeout=TIMEOUT) == 41
    assert result.parent is not None
    assert result.parent.get(timeout=TIMEOUT) == 40


def test_group_results_are_read_with_our_group_result(t: Any) -> None:
    result = group(t.add.s(i, i) for i in range(10))()
    assert isinstance(result, GroupResult)
    assert result.get(timeout=TIMEOUT) == [2 * i for i in range(10)]
    assert all(r.state == "SUCCESS" for r in result.results)


def test_chord_joins_on_the_stock_worker(t: Any) -> None:
    result = chord(t.add.s(i, i) for i in range(5))(t.tsum.s())
    assert result.get(timeout=TIMEOUT) == 20


def test_a_stock_failure_is_raised_by_our_get(t: Any, celery_worker: StockWorker) -> None:
    result = t.fail.delay("boom")
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=TIMEOUT)
    assert result.state == "FAILURE"
    assert result.traceback is not None
    assert "ValueError: boom" in result.traceback
    # It logs the failure as an ERROR, rightly (the traceback ends with the exception).
    wait_for(lambda: "ValueError: boom" in celery_worker.output(), timeout=5, what="the log")
    celery_worker.forget_output()


def test_an_errback_taking_any_arguments_is_called_in_the_stock_worker(
    t: Any, shared: Shared, celery_worker: StockWorker
) -> None:
    # The reference for the same check on our worker (test_interop_redis_celery_producer).
    result = t.fail.apply_async(("boom",), link_error=t.on_error.s())
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=TIMEOUT)
    [record] = wait_for(shared.errbacks, timeout=5, what="the errback")
    assert record == {"impl": "celery", "args": 3, "exc": "ValueError('boom')"}
    wait_for(lambda: "ValueError: boom" in celery_worker.output(), timeout=5, what="the log")
    celery_worker.forget_output()


def test_without_broker_side_eta_a_countdown_runs_on_a_celery_only_fleet(
    t: Any, shared: Shared, client: redis.Redis
) -> None:
    # What docs/redis.md prescribes when no celeriac consumer shares the Redis.
    producer = Celeriac(
        "eta-producer",
        broker=shared.url,
        backend=shared.url,
        task_default_queue=shared.queue,
        broker_transport_options={**shared.options(), "broker_side_eta": False},
        result_backend_transport_options={"global_keyprefix": shared.prefix},
    )
    try:
        sent = time.time()
        result = producer.send_task("interop.whoami", ("later",), countdown=1.5)
        assert client.exists(f"{shared.prefix}_celeriac.delayed.{shared.queue}") == 0
        value = result.get(timeout=TIMEOUT)
    finally:
        producer.close()
    assert value["impl"] == "celery"
    assert value["at"] >= sent + 1.5 - 0.05


def wait_present(t: Any) -> None:
    """Wait for a celeriac consumer's presence record (a worker's consumers register
    just after it says it is ready)."""
    wait_for(lambda: t.app.broker.consumers(), timeout=10, what="a celeriac consumer")


def test_a_countdown_runs_on_a_celery_only_fleet_by_default(
    t: Any, shared: Shared, client: redis.Redis
) -> None:
    # No celeriac consumer is alive: the message goes to the list with its `eta` header,
    # as kombu publishes it, and the stock worker runs it when due.
    sent = time.time()
    result = t.whoami.apply_async(("later",), countdown=2)
    assert client.exists(f"{shared.prefix}_celeriac.delayed.{shared.queue}") == 0
    value = result.get(timeout=TIMEOUT)
    print(f"countdown=2 on a Celery-only fleet started {value['at'] - sent:.2f} s after sending")
    assert value["impl"] == "celery"
    assert value["at"] >= sent + 2 - 0.05
    # Measured 2.00 s after sending (three runs); the bound leaves room for a loaded machine.
    assert value["at"] < sent + 2 + 1.5


def test_with_a_celeriac_consumer_alive_eta_waits_in_redis_and_is_promoted(
    t: Any, shared: Shared, client: redis.Redis, run_worker: RunWorker, tasks_dir: Path
) -> None:
    # A celeriac worker of another queue is enough: every fetch promotes every queue.
    write_tasks(tasks_dir, shared.celeriac_source())
    run_worker("-c", "1", "-Q", unique("other"))
    wait_present(t)
    sent = time.time()
    result = t.whoami.apply_async(("promoted",), countdown=1.0)
    delayed = f"{shared.prefix}_celeriac.delayed.{shared.queue}"
    assert client.zcard(delayed) == 1
    value = result.get(timeout=TIMEOUT)
    assert value["impl"] == "celery"
    assert value["at"] >= sent + 1.0 - 0.05
    assert client.zcard(delayed) == 0


def test_the_last_celeriac_worker_hands_the_delayed_set_over_on_warm_shutdown(
    t: Any, shared: Shared, client: redis.Redis, run_worker: RunWorker, tasks_dir: Path
) -> None:
    write_tasks(tasks_dir, shared.celeriac_source())
    worker = run_worker("-P", "threads", "-c", "1", "-Q", unique("other"))
    wait_present(t)
    sent = time.time()
    result = t.whoami.apply_async(("handed over",), countdown=3.0)
    delayed = f"{shared.prefix}_celeriac.delayed.{shared.queue}"
    assert client.zcard(delayed) == 1
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0
    assert client.zcard(delayed) == 0
    value = result.get(timeout=TIMEOUT)
    assert value["impl"] == "celery"
    assert value["at"] >= sent + 3.0 - 0.05


def test_the_next_celeriac_producer_hands_over_what_a_dead_fleet_left(
    t: Any, shared: Shared, client: redis.Redis, run_worker: RunWorker, tasks_dir: Path
) -> None:
    write_tasks(tasks_dir, shared.celeriac_source())
    worker = run_worker("-P", "threads", "-c", "1", "-Q", unique("other"), session=True)
    wait_present(t)
    sent = time.time()
    result = t.whoami.apply_async(("left behind",), countdown=2.0)
    delayed = f"{shared.prefix}_celeriac.delayed.{shared.queue}"
    assert client.zcard(delayed) == 1
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    # A producer that starts later, once the dead worker is silent for worker_lost_after
    # (short here), hands the delayed set to the lists on its first publish.
    producer = Celeriac(
        "late-producer",
        broker=shared.url,
        backend=shared.url,
        task_default_queue=shared.queue,
        broker_transport_options=shared.options(),
        result_backend_transport_options={"global_keyprefix": shared.prefix},
        worker_lost_after=1.0,
    )
    try:
        time.sleep(1.1)  # worker_lost_after passing: the point of the test, not a wait
        assert client.zcard(delayed) == 1
        assert producer.send_task("interop.add", (1, 2)).get(timeout=TIMEOUT) == 3
        assert client.zcard(delayed) == 0
    finally:
        producer.close()
    value = result.get(timeout=TIMEOUT)
    assert value["impl"] == "celery"
    assert value["at"] >= sent + 2.0 - 0.05
