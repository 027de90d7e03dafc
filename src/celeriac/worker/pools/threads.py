"""The threads pool: one consumer feeding N threads in the worker process.

Good for I/O-bound tasks that release the GIL. Time limits are raised asynchronously in
the task's thread (see `worker/limits.py`): a task blocked in C code notices them only
when it returns to Python.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from celeriac.worker.limits import ThreadTimeLimits
from celeriac.worker.pools.base import InProcessPool

__all__ = ["ThreadsPool"]


class ThreadsPool(InProcessPool):
    """N threads sharing one consumer and one broker connection."""

    name: ClassVar[str] = "threads"

    def run(self) -> int:
        self.install_signals()
        return self.consume(
            limits=ThreadTimeLimits(),
            run_async=asyncio.run,
            concurrency=self.options.concurrency,
        )
