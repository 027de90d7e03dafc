"""The pool interface, and what the in-process pools (solo, threads, asyncio) share.

A pool runs until shut down and returns the process exit code. How work reaches it
differs: prefork children each run their own consumer; solo and threads run one consumer
in the worker process; asyncio runs one consumer feeding an event loop.
"""

from __future__ import annotations

import logging
import os
import signal
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, final

from celeriac.worker.consumer import Consumer, consumer_id_for
from celeriac.worker.control import apply_control, request_info
from celeriac.worker.holdings import Holdings, Shutdown

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from celeriac.app.base import Celeriac
    from celeriac.brokers.base import Broker
    from celeriac.worker.consumer import Runner
    from celeriac.worker.execute import Executor, TimeLimits
    from celeriac.worker.options import WorkerOptions
    from celeriac.worker.pools.prefork.autoscale import PoolSize

__all__ = ["InProcessPool", "Pool", "PoolStats"]

logger = logging.getLogger("celeriac.worker")


@final
@dataclass(frozen=True, slots=True)
class PoolStats:
    """A pool's shape, for banners, stats and the dashboard."""

    implementation: str
    max_concurrency: int
    processes: tuple[int, ...]


class Pool(ABC):
    """Runs tasks for a worker until it is shut down."""

    name: ClassVar[str]
    #: The pool can interrupt a task at its soft time limit.
    supports_soft_time_limit: ClassVar[bool] = True

    def __init__(self, app: Celeriac, options: WorkerOptions) -> None:
        self.app = app
        self.options = options
        #: Run on the consuming process's presence thread after each presence tick (the
        #: worker-heartbeat event of an in-process pool: `start_remote`).
        self.presence_jobs: list[Callable[[], object]] = []

    @abstractmethod
    def run(self) -> int:
        """Run until shut down; return the exit code."""

    @abstractmethod
    def stats(self) -> PoolStats: ...

    # -- what remote control asks (worker/control.py's WorkerState) -------------------

    def active_requests(self) -> list[dict[str, Any]]:
        return []

    def reserved_requests(self) -> list[dict[str, Any]]:
        return []

    def processed(self) -> dict[str, int]:
        return {}

    def processed_count(self) -> int:
        """Tasks handled so far, in all."""
        return sum(self.processed().values())

    def processes(self) -> list[int]:
        return list(self.stats().processes)

    def pool_size(self) -> PoolSize | None:
        """What `pool_grow`, `pool_shrink` and `autoscale` change; None: a fixed size."""
        return None

    @abstractmethod
    def request_shutdown(self) -> None:
        """Begin a warm shutdown (the `shutdown` command)."""

    def forward_control(self, method: str, arguments: dict[str, Any]) -> None:  # noqa: B027
        """Pass a change made by remote control on to the processes running tasks."""


class InProcessPool(Pool):
    """A pool whose consumer lives in the worker process itself."""

    def __init__(self, app: Celeriac, options: WorkerOptions) -> None:
        super().__init__(app, options)
        self.shutdown = Shutdown()
        self._sigint_count = 0
        self.broker: Broker | None = None
        #: The consumer of this process, once running (what remote control reads).
        self.consumer: Consumer | None = None
        #: What the asyncio pool holds and runs with (it has no `Consumer`).
        self.holdings: Holdings | None = None
        self.executor: Executor | None = None

    def consume(
        self,
        *,
        limits: TimeLimits,
        run_async: Callable[[Any], Any] | None,
        concurrency: int = 1,
        runner: Callable[[int], Runner] | None = None,
        fetch_batch: int = 1,
    ) -> int:
        """Run one consumer in this process until shut down (solo, threads, gevent)."""
        options = self.options
        broker = self.app.create_broker(consumer_id=consumer_id_for(options.hostname, os.getpid()))
        self.broker = broker
        try:
            self.consumer = Consumer(
                self.app,
                broker,
                hostname=options.hostname,
                limits=limits,
                run_async=run_async,
                queues=options.queues,
                prefetch=options.prefetch_multiplier,
                shutdown=self.shutdown,
                concurrency=concurrency,
                pool=self.name,
                runner=runner,
                fetch_batch=fetch_batch,
            )
            for job in self.presence_jobs:
                self.consumer.holdings.on_presence_tick(job)
            self.consumer.run()
            return 0
        finally:
            broker.close()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_int)
        signal.signal(signal.SIGQUIT, self._on_quit)

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        if not self.shutdown.warm.is_set():
            logger.warning("Warm shutdown: finishing running tasks")
        self.shutdown.warm.set()

    def _on_int(self, signum: int, frame: FrameType | None) -> None:
        self._sigint_count += 1
        if self._sigint_count == 1:
            self._on_term(signum, frame)
        else:
            self._on_quit(signum, frame)

    def _on_quit(self, signum: int, frame: FrameType | None) -> None:
        # Cold shutdown: give back everything held, running tasks included, and leave now.
        logger.warning("Cold shutdown: returning every held message and exiting")
        self.shutdown.cold.set()
        broker = self.broker
        try:
            if broker is not None and broker.supports_recover:
                broker.recover(broker.consumer_id)
        finally:
            logging.shutdown()
            os._exit(0)

    def stats(self) -> PoolStats:
        return PoolStats(self.name, self.options.concurrency, (os.getpid(),))

    def request_shutdown(self) -> None:
        self.shutdown.warm.set()

    def _holdings(self) -> Holdings | None:
        return self.consumer.holdings if self.consumer is not None else self.holdings

    def _executor(self) -> Executor | None:
        return self.consumer.executor if self.consumer is not None else self.executor

    def active_requests(self) -> list[dict[str, Any]]:
        holdings = self._holdings()
        if holdings is None:
            return []
        running, _ = holdings.snapshot()
        return [request_info(d, self.options.hostname, os.getpid()) for d in running]

    def reserved_requests(self) -> list[dict[str, Any]]:
        holdings = self._holdings()
        if holdings is None:
            return []
        _, waiting = holdings.snapshot()
        return [request_info(d, self.options.hostname, None) for d in waiting]

    def processed(self) -> dict[str, int]:
        executor = self._executor()
        return dict(executor.stats.by_name) if executor is not None else {}

    def forward_control(self, method: str, arguments: dict[str, Any]) -> None:
        apply_control(self.app, self.consumer, self._executor(), method, arguments)
