"""A result backend outage: tasks keep running, results land when it returns, and a long
outage turns into an explicit `ResultLost`, never a silent PENDING."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from celeriac import Celeriac, chord, states
from celeriac.backends.memory import MemoryBackend
from celeriac.brokers.memory import MemoryBroker
from celeriac.exceptions import BackendError, ResultLost
from tests.helpers import wait_for

if TYPE_CHECKING:
    from celeriac.backends.base import ChordPart, ResultMeta
    from tests.conftest import StartWorker


class SwitchableBackend(MemoryBackend):
    """A memory backend that can be switched off, like a server going down."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.down = threading.Event()

    def _check(self) -> None:
        if self.down.is_set():
            raise BackendError("result backend unreachable (switched off by the test)")

    def store(self, meta: ResultMeta) -> None:
        self._check()
        super().store(meta)

    def chord_part_return(self, group_id: str, **kwargs: Any) -> list[ChordPart] | None:
        self._check()
        return super().chord_part_return(group_id, **kwargs)


@pytest.fixture
def backend(app: Celeriac) -> SwitchableBackend:
    switchable = SwitchableBackend(app.result_backend_url, expires=3600)
    app._backend = switchable  # the app (and its worker) use this instance
    return switchable


def leased(app: Celeriac) -> int:
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    return broker.leased_count()


def test_tasks_keep_running_while_the_backend_is_down(
    app: Celeriac, backend: SwitchableBackend, start_worker: StartWorker
) -> None:
    ran: list[int] = []

    @app.task
    def work(n: int) -> int:
        ran.append(n)
        return n * 2

    backend.down.set()
    start_worker(prefetch=2)
    results = [work.delay(n) for n in range(20)]
    # Far more tasks than the prefetch window run while no result can be stored.
    wait_for(lambda: len(ran) == 20, timeout=10, what="tasks run during the outage")
    # Nothing reached the backend (reads still work on this test backend).
    assert all(backend.get(r.id) is None for r in results)
    # Their messages are still leased: nothing is acked before its result is stored.
    assert leased(app) == 20
    backend.down.clear()
    assert [r.get(timeout=10) for r in results] == [n * 2 for n in range(20)]
    wait_for(lambda: leased(app) == 0, timeout=5, what="acks after the outage")


def test_a_long_outage_records_the_result_as_lost(
    app: Celeriac,
    backend: SwitchableBackend,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app.conf.result_backend_max_retry_time = 0.5

    @app.task
    def work() -> str:
        return "value"

    backend.down.set()
    start_worker()
    result = work.delay()
    # Past result_backend_max_retry_time, the spool gives the result up as lost.
    wait_for(
        lambda: any("recorded as lost" in r.getMessage() for r in caplog.records),
        timeout=10,
        what="the result given up as lost",
    )
    backend.down.clear()
    with pytest.raises(ResultLost, match="could not be stored"):
        result.get(timeout=10)
    assert result.state == states.FAILURE


def test_a_chord_part_waits_out_the_outage_too(
    app: Celeriac, backend: SwitchableBackend, start_worker: StartWorker
) -> None:
    ran: list[int] = []

    @app.task
    def add(x: int, y: int) -> int:
        ran.append(x)
        return x + y

    @app.task
    def total(values: list[int]) -> int:
        return sum(values)

    result = chord([add.s(1, 1), add.s(2, 2)])(total.s())
    backend.down.set()
    worker = start_worker()
    # Both parts run during the outage; the first one's write is spooled (and what
    # comes after it queues behind it).
    wait_for(
        lambda: len(ran) == 2 and len(worker.executor.spool) > 0,
        timeout=10,
        what="both parts run and spooled",
    )
    backend.down.clear()
    assert result.get(timeout=10) == 6


def test_the_retry_budget_counts_from_the_first_attempt() -> None:
    """A failed write that itself took long (the backend's own reconnect loop) counts
    against `max_age`: it is given up on the first background pass, not max_age later."""
    from celeriac.worker.spool import ResultSpool

    spool = ResultSpool(max_age=0.3)
    attempts: list[float] = []
    lost: list[float] = []
    done = threading.Event()

    def write() -> None:
        attempts.append(time.monotonic())
        time.sleep(0.4)  # what a reconnect loop spends before it gives up
        raise BackendError("down")

    try:
        spool.submit("t", write, lost=lambda: lost.append(time.monotonic()), done=done.set)
        assert done.wait(5)
        assert len(attempts) == 1, "retried past its budget"
        assert lost
    finally:
        spool.stop()


def test_the_spool_holds_at_most_ten_thousand_writes() -> None:
    from celeriac.worker.spool import MAX_ITEMS, ResultSpool

    assert MAX_ITEMS == ResultSpool(max_age=1.0).max_items == 10_000


def test_a_full_spool_stops_fetching_until_the_backend_is_back(
    app: Celeriac,
    backend: SwitchableBackend,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/worker.md: past the spool's cap the worker stops fetching until the backend
    is back. The cap is read at run time (`ResultSpool.max_items`), so a small one
    stands in for the 10,000 the test above pins."""
    from celeriac.worker.spool import ResultSpool

    cap = 4
    total = 12
    full_checks = 0
    real_is_full = ResultSpool.is_full

    def counting_is_full(spool: ResultSpool) -> bool:
        # A spy: counts how often the receive loop found the spool full.
        nonlocal full_checks
        full = bool(real_is_full.fget(spool))  # type: ignore[attr-defined]
        if full:
            full_checks += 1
        return full

    monkeypatch.setattr(ResultSpool, "is_full", property(counting_is_full))
    ran: list[int] = []

    @app.task
    def work(n: int) -> int:
        ran.append(n)
        return n * 2

    backend.down.set()
    worker = start_worker(prefetch=1)
    worker.executor.spool.max_items = cap
    results = [work.delay(n) for n in range(total)]
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    queue = app.conf.task_default_queue
    wait_for(lambda: full_checks > 0, timeout=10, what="the spool to fill up")
    ran_when_full = len(ran)
    # The receive loop goes round many times (0.05 s each) and takes nothing new.
    wait_for(lambda: full_checks >= 10, timeout=10, what="the loop to keep finding it full")
    assert len(ran) == ran_when_full < total
    assert len(worker.executor.spool) >= cap
    assert broker.size(queue) == total - ran_when_full
    assert all(backend.get(r.id) is None for r in results)
    # The backend is back: the spool drains, fetching resumes, every task runs once.
    backend.down.clear()
    assert [r.get(timeout=10) for r in results] == [n * 2 for n in range(total)]
    assert sorted(ran) == list(range(total))
    assert broker.size(queue) == 0
    wait_for(lambda: leased(app) == 0, timeout=5, what="acks after the outage")


def test_a_full_spool_stops_the_asyncio_pool_fetching_too(
    app: Celeriac, backend: SwitchableBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from celeriac.worker import settle
    from celeriac.worker.options import WorkerOptions
    from celeriac.worker.pools.aio import AsyncioPool
    from celeriac.worker.spool import ResultSpool

    cap = 4
    total = 12

    class SmallSpool(ResultSpool):
        """The real spool with a small cap (the pool builds its own, out of reach)."""

        full_checks = 0

        def __init__(self, *, max_age: float) -> None:
            super().__init__(max_age=max_age, max_items=cap)
            spools.append(self)

        @property
        def is_full(self) -> bool:
            # A spy: counts how often a receive loop found the spool full.
            full = len(self) >= self.max_items
            if full:
                self.full_checks += 1
            return full

    spools: list[SmallSpool] = []
    monkeypatch.setattr(settle, "ResultSpool", SmallSpool)
    ran: list[int] = []

    @app.task
    def work(n: int) -> int:
        ran.append(n)
        return n * 2

    backend.down.set()
    options = WorkerOptions.resolve(app, pool="asyncio", concurrency=1, prefetch_multiplier=1)
    pool = AsyncioPool(app, options)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(pool._main())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=run, name="asyncio-pool", daemon=True)
    thread.start()
    try:
        results = [work.delay(n) for n in range(total)]
        wait_for(lambda: spools and len(spools[0]) >= cap, timeout=10, what="a full spool")
        spool = spools[0]
        ran_when_full = len(ran)
        # Fetching on past the cap runs every task within moments; stopping leaves the
        # loop finding the spool full again and again. Wait for either, then tell which.
        wait_for(
            lambda: len(ran) == total or spool.full_checks >= 10,
            timeout=10,
            what="all tasks run, or the loop held back by the full spool",
        )
        assert len(ran) <= ran_when_full + 1 < total
        backend.down.clear()
        assert [r.get(timeout=10) for r in results] == [n * 2 for n in range(total)]
    finally:
        backend.down.clear()
        pool.shutdown.warm.set()
        thread.join(15)
    assert not thread.is_alive()
    assert errors == []
