"""The asyncio pool: `async def` tasks run concurrently on one event loop.

Concurrency is a semaphore, so thousands of tasks waiting on I/O cost a coroutine each.
Broker and backend calls are blocking, so they run on a small thread pool and never stall
the loop: each task's prepare and finish go there in batches (`batched.py`) and acks go
out with the next fetch. A plain `def` task runs on that pool too. The soft time limit
cancels the coroutine (it sees `CancelledError`) and is recorded as
`SoftTimeLimitExceeded`; the hard limit does the same at its own deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

from celeriac import states
from celeriac.app.context import pop_context, push_context
from celeriac.app.task import task_entry
from celeriac.exceptions import BrokerConnectionError, SoftTimeLimitExceeded, TimeLimitExceeded
from celeriac.worker.consumer import (
    FIRST_REVOCATIONS_WAIT,
    OUTAGE_PAUSE,
    RECEIVE_TIMEOUT,
    REVOCATION_REFRESH,
    consumer_id_for,
)
from celeriac.worker.execute import Executor
from celeriac.worker.fallback import FallbackRequeues
from celeriac.worker.holdings import AckBuffer, Holdings
from celeriac.worker.limits import ThreadTimeLimits
from celeriac.worker.pools.base import InProcessPool
from celeriac.worker.pools.batched import BatchedCalls
from celeriac.worker.revocations import RevocationFollower
from celeriac.worker.settle import Outcome

if TYPE_CHECKING:
    from celeriac.brokers.base import Delivery
    from celeriac.worker.admit import Request

__all__ = ["AsyncioPool"]

logger = logging.getLogger("celeriac.worker")

# Threads for blocking broker/backend calls and plain `def` tasks.
IO_THREADS = 32
# How long the loop waits before looking again when the prefetch window is full.
FULL_PAUSE = 0.005


class AsyncioPool(InProcessPool):
    """One event loop, `concurrency` tasks in flight."""

    name: ClassVar[str] = "asyncio"
    acks: AckBuffer | None = None

    def run(self) -> int:
        self.install_signals()
        asyncio.run(self._main())
        return 0

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        options = self.options
        io = ThreadPoolExecutor(
            min(IO_THREADS, max(4, options.concurrency)), thread_name_prefix="celeriac-io"
        )
        broker = self.app.create_broker(consumer_id=consumer_id_for(options.hostname, os.getpid()))
        self.broker = broker
        holdings = Holdings(
            broker,
            self.shutdown,
            window=options.concurrency * options.prefetch_multiplier,
            worker=options.hostname,
            pool=self.name,
            concurrency=options.concurrency,
        )
        # Acks go out with the next fetch (one round trip per batch, not per task).
        acks = AckBuffer(broker, holdings)
        self.acks = acks
        self.holdings = holdings
        for job in self.presence_jobs:
            holdings.on_presence_tick(job)
        executor = Executor(
            self.app,
            broker,
            hostname=options.hostname,
            acks=acks,
            limits=ThreadTimeLimits(),
        )
        self.executor = executor
        # On a thread of its own: a result backend that hangs must not stop lease renewal.
        revocations = RevocationFollower(executor.revocations, interval=REVOCATION_REFRESH)
        slots = asyncio.Semaphore(options.concurrency)
        running: set[asyncio.Task[None]] = set()

        async def blocking(fun: Any, *args: Any) -> Any:
            return await loop.run_in_executor(io, fun, *args)

        # Prepare and finish of many tasks share a thread hand-off (see batched.py).
        batched = BatchedCalls(loop, io)

        fallback = FallbackRequeues(broker)

        async def handle(delivery: Delivery) -> None:
            try:
                async with slots:
                    if not holdings.claim(delivery):
                        return
                    request = await batched.call(executor.prepare, delivery)
                    if request is None:
                        return
                    if request.task.is_async:
                        outcome = await self._run_coroutine(executor, request)
                    else:
                        outcome = await blocking(executor.run, request)
                    await batched.call(executor.settle.finish, request, outcome)
            except Exception as exc:  # isolation boundary: one delivery must not stop the loop
                await blocking(fallback.failed, delivery, exc)
            finally:
                acks.settle(delivery)

        try:
            while not self.shutdown.is_requested():
                try:
                    for queue in options.queues:
                        await blocking(broker.declare, queue)
                    break
                except BrokerConnectionError as exc:
                    logger.warning("Broker unreachable; waiting for it: %s", exc)
                    await asyncio.sleep(OUTAGE_PAUSE)
            await blocking(revocations.start, FIRST_REVOCATIONS_WAIT)
            holdings.start()
            while not self.shutdown.is_requested():
                if executor.spool.is_full:
                    # Results are waiting for the backend: stop taking new work.
                    await asyncio.sleep(FULL_PAUSE)
                    continue
                free = holdings.room()
                if free <= 0:
                    await asyncio.sleep(FULL_PAUSE)
                    continue
                batch = await blocking(self._receive, free)
                if not batch:
                    continue
                holdings.hold(batch)
                for delivery in batch:
                    task = asyncio.create_task(handle(delivery))
                    running.add(task)
                    task.add_done_callback(running.discard)
            holdings.return_prefetched()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            await blocking(acks.flush)
        finally:
            revocations.stop()
            holdings.stop()
            await blocking(broker.close)
            io.shutdown(wait=True)

    def _receive(self, limit: int) -> list[Delivery]:
        assert self.acks is not None
        try:
            return self.acks.receive_after(
                list(self.options.queues), limit=limit, timeout=RECEIVE_TIMEOUT
            )
        except BrokerConnectionError as exc:
            # The broker's own retries gave up: keep what is held and try again soon.
            logger.warning("Broker unreachable; consuming resumes once it is back: %s", exc)
            time.sleep(OUTAGE_PAUSE)
            return []

    async def _run_coroutine(self, executor: Executor, request: Request) -> Outcome:
        task, call = request.task, request.call
        token = push_context(task, request.context)
        loop = asyncio.get_running_loop()
        request.started = loop.time()
        limit = request.soft_time_limit or request.time_limit
        try:
            task.before_start(call.id, call.args, call.kwargs)
            body = task_entry(task)(*call.args, **call.kwargs)
            try:
                value = await (asyncio.wait_for(body, limit) if limit else body)
            except asyncio.TimeoutError:
                kind = SoftTimeLimitExceeded if request.soft_time_limit else TimeLimitExceeded
                raise kind(f"time limit ({limit}s) exceeded") from None
            return Outcome(states.SUCCESS, value, runtime=loop.time() - request.started)
        except BaseException as exc:  # isolation boundary: the task's own failure
            return executor.outcome_of(request, exc)
        finally:
            pop_context(token)
