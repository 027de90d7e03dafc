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
