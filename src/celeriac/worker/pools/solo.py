"""The solo pool: one task at a time, inline in the worker process."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from celeriac.worker.limits import AlarmTimeLimits, install_alarm_handler
from celeriac.worker.pools.base import InProcessPool

__all__ = ["SoloPool"]


class SoloPool(InProcessPool):
    """Fetch, run, store, ack, one message at a time, in this process."""

    name: ClassVar[str] = "solo"

    def run(self) -> int:
        self.install_signals()
        install_alarm_handler()
        loop = asyncio.new_event_loop()
        try:
            return self.consume(limits=AlarmTimeLimits(), run_async=loop.run_until_complete)
        finally:
            loop.close()
