"""The gevent pool refuses to start where gevent has not patched the process."""

from __future__ import annotations

from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.exceptions import ImproperlyConfigured
from celeriac.worker.options import WorkerOptions
from celeriac.worker.pools.gevent import GeventPool


def test_an_unpatched_process_is_refused_with_how_to_start_it() -> None:
    app = Celeriac("unpatched", broker="memory://")
    options = WorkerOptions.resolve(app, pool="gevent", hostname="w@h")
    with pytest.raises(ImproperlyConfigured, match=r"worker -P gevent"):
        GeventPool(app, options)


def test_the_eventlet_pool_is_refused_pointing_to_gevent() -> None:
    app = Celeriac("eventlet", broker="memory://")
    with pytest.raises(ImproperlyConfigured, match=r"deprecated.*use -P gevent"):
        WorkerOptions.resolve(app, pool="eventlet", hostname="w@h")


def test_the_runner_keeps_at_most_its_size_of_greenlets_and_reuses_them() -> None:
    import gevent

    from celeriac.worker.pools.gevent import GreenletRunner

    runner = GreenletRunner(3)
    ran: list[tuple[int, int]] = []

    def work(n: Any) -> None:
        gevent.sleep(0.01)
        ran.append((n, id(gevent.getcurrent())))

    deliveries: list[Any] = list(range(9))  # stand-ins: the runner only passes them on
    for n in deliveries:
        runner.submit(work, n)
    runner.shutdown(wait=True)
    assert sorted(n for n, _ in ran) == list(range(9))
    assert len({greenlet for _, greenlet in ran}) == 3


def test_the_runner_replaces_a_greenlet_that_died() -> None:
    import gevent

    from celeriac.worker.pools.gevent import GreenletRunner

    runner = GreenletRunner(1)
    ran: list[int] = []

    def work(n: Any) -> None:
        if n == 0:
            raise RuntimeError("escaped the consumer")  # gevent prints it, the greenlet ends
        ran.append(n)

    first: Any = 0
    second: Any = 1
    runner.submit(work, first)
    gevent.sleep(0.01)
    runner.submit(work, second)
    runner.shutdown(wait=True)
    assert ran == [1]
