"""The threads pool: one consumer feeding N threads in the worker process.

Good for I/O-bound tasks that release the GIL. Time limits are raised asynchronously in
the task's thread (see `worker/limits.py`): a task blocked in C code notices them only
when it returns to Python.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

from celeriac.worker.consumer import Consumer, consumer_id_for
from celeriac.worker.execute import Executor
from celeriac.worker.limits import ThreadTimeLimits
from celeriac.worker.pools.base import InProcessPool

__all__ = ["ThreadsPool"]


class ThreadsPool(InProcessPool):
    """N threads sharing one consumer and one broker connection."""

    name: ClassVar[str] = "threads"

    def run(self) -> int:
        self.install_signals()

        def run_async(coroutine: Any) -> Any:
            return asyncio.run(coroutine)

        broker = self.app.create_broker(
            consumer_id=consumer_id_for(self.options.hostname, os.getpid())
        )
        self.broker = broker
        try:
            executor = Executor(
                self.app,
                broker,
                hostname=self.options.hostname,
                limits=ThreadTimeLimits(),
                run_async=run_async,
            )
            Consumer(
                broker,
                executor,
                queues=self.options.queues,
                prefetch=self.options.prefetch_multiplier,
                shutdown=self.shutdown,
                concurrency=self.options.concurrency,
            ).run()
            return 0
        finally:
            broker.close()
