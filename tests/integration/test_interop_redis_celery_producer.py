"""A stock Celery 5.7 producer feeds a running `celeriac worker` on Redis.

The test process is the Celery client: it sends with Celery's own `delay`,
`apply_async` and canvas (messages exactly as kombu writes them, ETA messages pushed
straight to the list) and reads every result with Celery's `AsyncResult` and
`GroupResult` from the same Redis. The worker is a real celeriac process.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import celery
import pytest
import redis

from tests.helpers import require_redis, unique, wait_for
from tests.integration.conftest import RunWorker, write_tasks
from tests.integration.interop_redis import Shared, close_stock_app, import_module

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.redis]

TIMEOUT = 20.0


@pytest.fixture
def shared() -> Iterator[Shared]:
    url = require_redis()
    name = unique("ip")
    place = Shared(url=url, prefix=f"{name}:", queue=name)
    yield place
    place.delete_keys()


@pytest.fixture
def worker_dir(tasks_dir: Path, shared: Shared) -> Path:
    """`tasks.py` for the celeriac worker, `stockproj.py` for the Celery producer."""
    write_tasks(tasks_dir, shared.celeriac_source())
    (tasks_dir / "stockproj.py").write_text(shared.celery_source())
    return tasks_dir


@pytest.fixture
def stock(worker_dir: Path) -> Iterator[Any]:
    """The stock Celery app (and its task stubs) in this process: the producer."""
    module = import_module(worker_dir, "stockproj")
    yield module
    close_stock_app(module.app)


@pytest.fixture
def client(shared: Shared) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(shared.url)
    yield connection
    connection.close()


def test_delay_runs_on_our_worker_and_celery_reads_the_result(
    stock: Any, run_worker: RunWorker
) -> None:
    worker = run_worker("-c", "2")
    result = stock.whoami.delay("hello")
    assert isinstance(result, celery.result.AsyncResult)
    value = result.get(timeout=TIMEOUT)
    assert value["tag"] == "hello"
    assert value["impl"] == "celeriac"
    assert value["pid"] in worker.children()
    assert result.state == "SUCCESS"
    assert stock.add.delay(2, 2).get(timeout=TIMEOUT) == 4


def test_a_countdown_waits_in_our_delayed_set_not_in_the_worker(
    stock: Any, shared: Shared, client: redis.Redis, run_worker: RunWorker
) -> None:
    run_worker("-c", "2")
    sent = time.time()
    result = stock.whoami.apply_async(("later",), countdown=2)
    # Celery pushed it straight to the list with an `eta` header; our worker fetched it
    # and handed it to the broker's delayed set instead of holding it in memory.
    delayed = f"{shared.prefix}_celeriac.delayed.{shared.queue}"
    wait_for(lambda: client.zcard(delayed) == 1, timeout=5, what="the deferred message")
    assert client.llen(shared.prefix + shared.queue) == 0
    assert client.hlen(shared.prefix + "unacked") == 0
    value = result.get(timeout=TIMEOUT)
    assert value["tag"] == "later"
    assert value["at"] >= sent + 2 - 0.05
    assert client.zcard(delayed) == 0


def test_priorities_are_served_in_celerys_redis_order(
    stock: Any, shared: Shared, client: redis.Redis, run_worker: RunWorker
) -> None:
    run_worker("-c", "1", "--prefetch-multiplier", "1")
    blocker = stock.nap.delay(1.0, "blocker")
    # The only slot is busy with the blocker (leased) while the others arrive.
    wait_for(lambda: client.hlen(shared.prefix + "unacked") == 1, timeout=5, what="blocker")
    results = {p: stock.nap.apply_async((0, f"p{p}"), priority=p) for p in (9, 0, 6, 3)}
    blocker.get(timeout=TIMEOUT)
    started = {p: r.get(timeout=TIMEOUT)["at"] for p, r in results.items()}
    # Celery compat: on Redis priority 0 is served first.
    assert sorted(started, key=started.__getitem__) == [0, 3, 6, 9]


def test_link_calls_the_callback_with_the_result(stock: Any, run_worker: RunWorker) -> None:
    run_worker("-c", "2")
    callback = stock.mul.s(10)
    callback_result = callback.freeze()
    result = stock.add.apply_async((2, 3), link=callback)
    assert result.get(timeout=TIMEOUT) == 5
    assert stock.app.AsyncResult(callback_result.id).get(timeout=TIMEOUT) == 50


def test_chain_passes_each_result_on(stock: Any, run_worker: RunWorker) -> None:
    run_worker("-c", "2")
    result = celery.chain(stock.add.s(2, 2), stock.mul.s(10), stock.add.s(1)).apply_async()
    assert result.get(timeout=TIMEOUT) == 41
    assert result.parent.get(timeout=TIMEOUT) == 40
    assert result.parent.parent.get(timeout=TIMEOUT) == 4


def test_group_results_are_read_with_celerys_group_result(
    stock: Any, run_worker: RunWorker
) -> None:
    run_worker("-c", "2")
    result = celery.group(stock.add.s(i, i) for i in range(10)).apply_async()
    assert isinstance(result, celery.result.GroupResult)
    assert result.get(timeout=TIMEOUT) == [2 * i for i in range(10)]
    assert result.successful()


def test_chord_body_gets_every_header_result(stock: Any, run_worker: RunWorker) -> None:
    run_worker("-c", "2")
    result = celery.chord(stock.add.s(i, i) for i in range(5))(stock.tsum.s())
    assert result.get(timeout=TIMEOUT) == 20
    assert result.parent is not None
    assert result.parent.get(timeout=TIMEOUT) == [0, 2, 4, 6, 8]


def test_a_failure_is_raised_by_celerys_get(stock: Any, run_worker: RunWorker) -> None:
    run_worker("-c", "2")
    result = stock.fail.delay("boom")
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=TIMEOUT)
    assert result.state == "FAILURE"
    assert "ValueError: boom" in result.traceback


def test_an_errback_taking_any_arguments_is_called_in_the_worker_as_celery_does(
    stock: Any, shared: Shared, run_worker: RunWorker
) -> None:
    run_worker("-c", "2")
    result = stock.fail.apply_async(("boom",), link_error=stock.on_error.s())
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=TIMEOUT)
    [record] = wait_for(shared.errbacks, timeout=5, what="the errback")
    assert record == {"impl": "celeriac", "args": 3, "exc": "ValueError('boom')"}
