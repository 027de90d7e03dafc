"""The gevent pool: one consumer feeding N greenlets in the worker process.

For sync I/O-bound tasks (`time.sleep`, `requests`, database drivers written in Python):
with the standard library monkey-patched, a task blocked on a socket or a sleep yields to
the others, so one process runs hundreds of such tasks at once without a thread each.
The `celeriac worker -P gevent` command patches first thing, before anything imports
`socket` or `threading` (`celeriac/_patching.py`); a pool chosen any other way (the
`worker_pool` setting, a worker started from Python) needs a program that patched first,
and the pool refuses to start otherwise.

Time limits are `gevent.Timeout`s raised in the task's greenlet (`GreenletTimeLimits`):
both the soft and the hard limit interrupt a task waiting on patched I/O or a sleep; a
task busy in CPU-bound code without yielding notices neither until it yields.
Signals are handled in a greenlet of their own (`gevent.signal_handler`), never in the
hub. `async def` tasks are refused (an asyncio loop per greenlet would share one thread).
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, ClassVar

from celeriac.exceptions import ImproperlyConfigured, SoftTimeLimitExceeded, TimeLimitExceeded
from celeriac.worker.pools.base import InProcessPool

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from celeriac.app.base import Celeriac
    from celeriac.brokers.base import Delivery
    from celeriac.worker.admit import Request
    from celeriac.worker.options import WorkerOptions

__all__ = ["GeventPool", "GreenletRunner", "GreenletTimeLimits", "require_gevent"]

logger = logging.getLogger("celeriac.worker")

# Fetch once an eighth of the window is free, while as many fetched deliveries wait for a
# greenlet: every fetch is a turn of the consumer and a round trip or two, in the thread
# all the greenlets share. In S4 sync on RabbitMQ (window 2,000) fetching at every free
# place averaged 60 deliveries a fetch and cost 8-15 points of the ideal rate.
FETCH_SHARE = 8

INSTALL_HINT = 'the gevent pool needs gevent: pip install "celeriac[gevent]"'
NOT_PATCHED = (
    "the gevent pool needs the standard library monkey-patched before anything imports "
    "socket or threading: start it as `celeriac -A APP worker -P gevent` (which patches "
    "first thing), or call gevent.monkey.patch_all() at the very top of your program"
)


def require_gevent() -> None:
    """Check gevent is installed and has patched this process.

    Raises:
        ImproperlyConfigured: gevent is missing, or the process is not patched.
    """
    try:
        from gevent import monkey
    except ImportError:
        raise ImproperlyConfigured(INSTALL_HINT) from None
    if not (monkey.is_module_patched("socket") and monkey.is_module_patched("threading")):
        raise ImproperlyConfigured(NOT_PATCHED)


class GreenletRunner:
    """Runs deliveries on at most `size` greenlets (the consumer's `Runner`).

    Greenlets are made as work needs them and then kept, each taking the next delivery
    from a queue: a greenlet made per task cost about a seventh of the worker's CPU in a
    profile of 100 ms sync tasks (gevent records each new greenlet's spawning stack).
    """

    def __init__(self, size: int) -> None:
        from gevent.queue import Queue

        self.size = size
        self._work: Any = Queue()
        self._greenlets: set[Any] = set()
        # Greenlets waiting for work, less the deliveries already queued for them.
        self._idle = 0

    def submit(self, fn: Callable[[Delivery], None], delivery: Delivery, /) -> object:
        # The consumer never hands over more than the free slots, so a delivery queued
        # here is taken by a waiting greenlet or by the one made for it.
        self._work.put((fn, delivery))
        if self._idle > 0:
            self._idle -= 1
        elif len(self._greenlets) < self.size:
            import gevent

            self._greenlets.add(gevent.spawn(self._serve))
        return None

    def _serve(self) -> None:
        from gevent import getcurrent

        try:
            while True:
                item = self._work.get()
                if item is None:
                    return
                fn, delivery = item
                fn(delivery)
                self._idle += 1
        finally:
            # Gone (shut down, or killed by what escaped the consumer's own handling):
            # a later delivery gets a new greenlet in its place.
            self._greenlets.discard(getcurrent())

    def shutdown(self, wait: bool = True) -> None:
        import gevent

        greenlets = list(self._greenlets)
        for _ in greenlets:
            self._work.put(None)
        if wait:
            gevent.joinall(greenlets)
        else:
            gevent.killall(greenlets, block=False)


class GreenletTimeLimits:
    """Soft and hard limits as `gevent.Timeout`s in the running task's greenlet."""

    def __init__(self) -> None:
        self._armed: dict[int, list[Any]] = {}

    def arm(self, request: Request) -> None:
        from gevent import Timeout, getcurrent

        timeouts = []
        soft, hard = request.soft_time_limit, request.time_limit
        if soft:
            timeouts.append(
                Timeout(soft, SoftTimeLimitExceeded(f"soft time limit ({soft}s) exceeded"))
            )
        if hard:
            timeouts.append(Timeout(hard, TimeLimitExceeded(hard)))
        for timeout in timeouts:
            timeout.start()
        if timeouts:
            self._armed[id(getcurrent())] = timeouts

    def disarm(self, request: Request) -> None:
        from gevent import getcurrent

        for timeout in self._armed.pop(id(getcurrent()), ()):
            timeout.close()


class GeventPool(InProcessPool):
    """N greenlets sharing one consumer and one broker connection."""

    name: ClassVar[str] = "gevent"

    def __init__(self, app: Celeriac, options: WorkerOptions) -> None:
        require_gevent()
        super().__init__(app, options)

    def run(self) -> int:
        self.install_signals()
        concurrency = self.options.concurrency
        window = concurrency * max(1, self.options.prefetch_multiplier)
        return self.consume(
            limits=GreenletTimeLimits(),
            run_async=None,
            concurrency=concurrency,
            runner=GreenletRunner,
            fetch_batch=max(1, window // FETCH_SHARE),
        )

    def install_signals(self) -> None:
        # In a greenlet of their own: a handler run in the hub could not wait for I/O
        # (the cold shutdown returns messages to the broker before leaving).
        import gevent

        handlers: dict[int, Callable[[int, Any], None]] = {
            signal.SIGTERM: self._on_term,
            signal.SIGINT: self._on_int,
            signal.SIGQUIT: self._on_quit,
        }
        for signum, handler in handlers.items():
            gevent.signal_handler(signum, handler, signum, None)
