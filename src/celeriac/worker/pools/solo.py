"""The solo pool: one task at a time, inline in the worker process."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from celeriac.worker.consumer import Consumer, consumer_id_for
from celeriac.worker.execute import Executor
from celeriac.worker.limits import AlarmTimeLimits, install_alarm_handler
from celeriac.worker.pools.base import InProcessPool

__all__ = ["SoloPool"]


class SoloPool(InProcessPool):
    """Fetch, run, store, ack, one message at a time, in this process."""

    name: ClassVar[str] = "solo"

    def run(self) -> int:
        import os

        self.install_signals()
        install_alarm_handler()
        loop = asyncio.new_event_loop()

        def run_async(coroutine: Any) -> Any:
            return loop.run_until_complete(coroutine)

        broker = self.app.create_broker(
            consumer_id=consumer_id_for(self.options.hostname, os.getpid())
        )
        self.broker = broker
        try:
            executor = Executor(
                self.app,
                broker,
                hostname=self.options.hostname,
                limits=AlarmTimeLimits(),
                run_async=run_async,
            )
            Consumer(
                broker,
                executor,
                queues=self.options.queues,
                prefetch=self.options.prefetch_multiplier,
                shutdown=self.shutdown,
                max_tasks=None,
                max_memory_kib=None,
            ).run()
            return 0
        finally:
            broker.close()
            loop.close()
