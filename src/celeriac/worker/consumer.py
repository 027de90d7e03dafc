"""The receive loop of a consuming process.

`Consumer.run()` (prefork children, solo, threads) fetches batches (its prefetch window)
in one round trip each and hands each delivery to its `Executor`, inline or on threads.
What it holds and the acks it owes live in `holdings.py`; the asyncio pool has its own
loop over the same `Holdings`.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from celeriac._crashpoints import crash_point
from celeriac.exceptions import BrokerConnectionError
from celeriac.worker.execute import Executor
from celeriac.worker.fallback import FallbackRequeues
from celeriac.worker.holdings import AckBuffer, Holdings
from celeriac.worker.revocations import RevocationFollower

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    from celeriac.app.base import Celeriac
    from celeriac.brokers.base import Broker, Delivery
    from celeriac.worker.execute import TimeLimits
    from celeriac.worker.holdings import Shutdown

__all__ = ["Consumer", "Runner", "consumer_id_for"]

logger = logging.getLogger("celeriac.worker")

# How long one receive call may block; bounds how fast a stop request is noticed.
RECEIVE_TIMEOUT = 1.0
# How long a stopping consumer waits for results still on their way to the backend.
SPOOL_GRACE = 10.0
# How often a consuming process reads new revocations.
REVOCATION_REFRESH = 1.0
# How long a consumer waits for its first read of revocations before it fetches.
FIRST_REVOCATIONS_WAIT = 3.0
# Pause between fetches while the broker is unreachable (its own retries gave up).
OUTAGE_PAUSE = 1.0


class Runner(Protocol):
    """Runs deliveries side by side: a thread pool, or a greenlet pool (`-P gevent`)."""

    def submit(self, fn: Callable[[Delivery], None], delivery: Delivery, /) -> object: ...

    def shutdown(self, wait: bool = True) -> None: ...


def consumer_id_for(hostname: str, pid: int) -> str:
    """The lease owner name of the consuming process `pid` of worker `hostname`."""
    return f"{hostname}:{pid}"


def resident_kib() -> int:
    """This process's resident memory in KiB (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


class Consumer:
    """Fetches deliveries for one process and runs them with an `Executor` of its own.

    Args:
        app: The app (tasks, settings, result backend).
        broker: This process's broker (its consumer_id owns the leases).
        hostname: This worker's node name (`name@host`).
        limits: The pool's time-limit mechanism.
        run_async: Runs an `async def` task body to its end (None: this pool cannot).
        local_crashes: Deaths counted by this worker's supervisor (prefork children).
        queues: Queues to consume, in order.
        prefetch: Messages fetched ahead per slot (the prefetch multiplier).
        shutdown: Stop requests.
        concurrency: Tasks run at once (threads); 1 runs them inline in this thread.
        runner: Makes what runs tasks side by side when `concurrency` is above 1
            (default: a thread pool of that many threads).
        max_tasks: Leave after this many tasks (`--max-tasks-per-child`).
        max_memory_kib: Leave after a task once resident memory passes this.
        parent_pid: Exit when this process stops being our parent (prefork children).
        receive_timeout: Longest wait in one receive call (how soon a stop is noticed).
        pool: The pool's name (for the presence record).
        before_dispatch: Called before each fetched batch runs (a prefork child reads
            the remote control changes its supervisor passed on).
        fetch_batch: Wait for this many free places before fetching while as many
            fetched deliveries wait to start (1: fetch as soon as one place is free).
    """

    def __init__(
        self,
        app: Celeriac,
        broker: Broker,
        *,
        hostname: str,
        limits: TimeLimits,
        run_async: Callable[[Any], Any] | None = None,
        local_crashes: Mapping[str, int] | None = None,
        queues: Sequence[str],
        prefetch: int,
        shutdown: Shutdown,
        concurrency: int = 1,
        max_tasks: int | None = None,
        max_memory_kib: int | None = None,
        parent_pid: int | None = None,
        receive_timeout: float = RECEIVE_TIMEOUT,
        pool: str = "solo",
        before_dispatch: Callable[[], object] | None = None,
        runner: Callable[[int], Runner] | None = None,
        fetch_batch: int = 1,
    ) -> None:
        self.broker = broker
        self.receive_timeout = receive_timeout
        self.before_dispatch = before_dispatch
        self.queues = list(queues)
        self.concurrency = max(1, concurrency)
        self.shutdown = shutdown
        self.max_tasks = max_tasks
        self.max_memory_kib = max_memory_kib
        self.fetch_batch = max(1, fetch_batch)
        self.holdings = Holdings(
            broker,
            shutdown,
            window=max(1, prefetch) * self.concurrency,
            parent_pid=parent_pid,
            worker=hostname,
            pool=pool,
            concurrency=self.concurrency,
        )
        self.acks = AckBuffer(broker, self.holdings)
        self.executor = Executor(
            app,
            broker,
            hostname=hostname,
            acks=self.acks,
            limits=limits,
            run_async=run_async,
            local_crashes=local_crashes,
        )
        self.fallback = FallbackRequeues(broker)
        # Revocations are read on a thread of their own: a result backend that hangs
        # must not hold up lease renewal (the keeper) or the receive loop.
        self.revocations = RevocationFollower(
            self.executor.revocations, interval=REVOCATION_REFRESH
        )
        self._make_runner = runner or _thread_runner
        self._pool: Runner | None = None
        self._broker_lost = False
        self._handled = 0

    def run(self) -> str:
        """Consume until stopped; return why ("shutdown", "max-tasks", "max-memory")."""
        holdings = self.holdings
        holdings.start()
        if self.concurrency > 1:
            self._pool = self._make_runner(self.concurrency)
        reason = "shutdown"
        try:
            self._declare_queues()
            # Know what was revoked before taking the first message (waiting a few
            # seconds at most for a result backend that does not answer).
            self.revocations.start(wait=FIRST_REVOCATIONS_WAIT)
            while not self.shutdown.is_requested():
                if self.executor.spool.is_full:
                    # Results are waiting for the backend: stop taking new work.
                    self.shutdown.warm.wait(self.receive_timeout)
                    continue
                free = holdings.room(wait=self.receive_timeout, batch=self.fetch_batch)
                if free <= 0:
                    continue
                batch = self._receive(free)
                if not batch:
                    continue
                holdings.hold(batch)
                crash_point("after_fetch")
                if self.before_dispatch is not None:
                    # Remote control changes (a revoke) that came while fetching.
                    self.before_dispatch()
                for delivery in batch:
                    if self.shutdown.is_requested() or holdings.leaving:
                        break
                    self._dispatch(delivery)
                stop = self._should_leave()
                if stop:
                    reason = stop
                    break
        finally:
            holdings.return_prefetched()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            # Give results waiting for the backend a moment; what is still waiting after
            # that is returned with its message (not acked) and runs again.
            self.executor.spool.wait_empty(SPOOL_GRACE)
            self.acks.flush()
            self.revocations.stop()
            holdings.stop()
        return reason

    def _dispatch(self, delivery: Delivery) -> None:
        if not self.holdings.claim(delivery):
            return
        if self._pool is None:
            self._run_one(delivery)
        else:
            self._pool.submit(self._run_one, delivery)

    def _run_one(self, delivery: Delivery) -> None:
        try:
            self.executor.handle(delivery)
        except Exception as exc:  # isolation boundary: never let one delivery stop the loop
            self.fallback.failed(delivery, exc)
        finally:
            self._handled += 1
            self.acks.settle(delivery)

    def _should_leave(self) -> str | None:
        if self.max_tasks is not None and self._handled >= self.max_tasks:
            return "max-tasks"
        if self.max_memory_kib is not None and resident_kib() > self.max_memory_kib:
            return "max-memory"
        return None

    def _declare_queues(self) -> None:
        """Declare the consumed queues, waiting out a broker that is not there yet."""
        while not self.shutdown.is_requested():
            try:
                for queue in self.queues:
                    self.broker.declare(queue)
            except BrokerConnectionError as exc:
                self._lost(exc)
            else:
                self._found()
                return

    def _lost(self, exc: BaseException) -> None:
        if not self._broker_lost:
            self._broker_lost = True
            logger.warning("Broker unreachable; consuming resumes once it is back: %s", exc)
        deadline = time.monotonic() + OUTAGE_PAUSE
        while not self.shutdown.is_requested() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _found(self) -> None:
        if self._broker_lost:
            self._broker_lost = False
            logger.warning("Broker reachable again; consuming")

    def _receive(self, limit: int) -> list[Delivery]:
        """Fetch a batch; while the broker is unreachable, wait and report nothing.

        The broker's own reconnect retries have given up when this sees the error. The
        process keeps what it holds and tries again until the broker is back: a
        replacement process could not connect either (Celery's consumer waits too).
        """
        try:
            batch = self.holdings.fetch(
                lambda: self.acks.receive_after(
                    self.queues, limit=limit, timeout=self.receive_timeout
                )
            )
        except BrokerConnectionError as exc:
            self._lost(exc)
            return []
        self._found()
        return batch


def _thread_runner(concurrency: int) -> Runner:
    return ThreadPoolExecutor(concurrency, thread_name_prefix="celeriac-task")
