"""Rate limits in the worker: every start on a slot of its own, shared by the cluster.

A rate-limited task (`rate_limit="30/m"`) reserves a start slot: `max(now, previous slot
+ interval)`, atomically, through the broker (SQLite, Redis), else the result backend
(RabbitMQ fleets with Redis or SQLite results), else this process alone. A message whose
slot is not due goes back to the broker's delayed store until a little before it (the
broker's `delay_precision`), and the last moment is waited here, so starts stay
`interval` apart even on a broker with coarse delays. A message that comes back after
its slot has lost it and reserves a new one. No message waits for its slot in a worker.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from celeriac._time import UTC
from celeriac.app.ratelimit import rate_interval

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.app.task import Task
    from celeriac.brokers.base import Broker, Delivery
    from celeriac.protocol.message import Message

__all__ = ["RATE_SLOT_HEADER", "RateGate"]

# Header carrying the start slot a rate-limited message already reserved.
RATE_SLOT_HEADER = "x-celeriac-rate-slot"
# A slot this close counts as now (clock granularity).
DUE_TOLERANCE = 0.005
# Held here, not deferred, when the slot is within the broker's precision plus this.
HOLD_MARGIN = 0.05


class Defer(Protocol):
    def __call__(
        self, delivery: Delivery, *, eta: datetime, message: Message | None = None
    ) -> None: ...


class RateGate:
    """Lets rate-limited tasks start only on their slot.

    Args:
        app: The app (task defaults, settings, result backend).
        broker: The consumer's broker (its slots, its delayed store).
        defer: Hands a delivery back to the broker until an instant.
    """

    def __init__(self, app: Celeriac, broker: Broker, *, defer: Defer) -> None:
        self.app = app
        self.broker = broker
        self.defer = defer
        self.disabled: bool = app.conf.worker_disable_rate_limits
        self._intervals: dict[str, float | None] = {}
        self._local_slots: dict[str, float] = {}
        # A message this close to its slot is held here, not deferred.
        self._hold_limit = broker.delay_precision + HOLD_MARGIN

    def set_rate_limit(self, name: str, limit: Any) -> None:
        """Change a task's rate limit at run time."""
        self._intervals[name] = rate_interval(limit)

    def interval(self, task: Task[Any, Any]) -> float | None:
        """Seconds between two starts of `task`, or None when it is not limited."""
        if self.disabled:
            return None
        if task.name not in self._intervals:
            limit = task.rate_limit
            if limit is None:
                limit = self.app.conf.task_default_rate_limit
            self._intervals[task.name] = rate_interval(limit)
        return self._intervals[task.name]

    def admit(self, delivery: Delivery, task: Task[Any, Any]) -> bool:
        """True to run now (on its slot); False when the message was deferred."""
        interval = self.interval(task)
        if interval is None:
            return True
        reserved = delivery.message.headers.get(RATE_SLOT_HEADER)
        if isinstance(reserved, int | float) and self._start_on_slot(reserved):
            return True
        slot = self._reserve_slot(task.name, interval)
        if self._start_on_slot(slot):
            return True
        message = delivery.message
        deferred = replace(message, headers={**message.headers, RATE_SLOT_HEADER: slot})
        release = slot - self.broker.delay_precision
        self.defer(delivery, eta=datetime.fromtimestamp(release, UTC), message=deferred)
        return False

    def _start_on_slot(self, slot: float) -> bool:
        """Wait for `slot` if it is close; False if it is too far off, or already gone."""
        wait = slot - self._now()
        if wait < -DUE_TOLERANCE or wait > self._hold_limit:
            return False
        if wait > 0:
            time.sleep(wait)
        return True

    def _now(self) -> float:
        """Now on the clock that stamped the slots (a shared store's is its server's)."""
        if self.broker.supports_rate_limit:
            return self.broker.clock.time()
        backend = self.app.backend
        if backend.supports_rate_limit:
            return backend.clock.time()
        return time.time()

    def _reserve_slot(self, name: str, interval: float) -> float:
        key = f"rate:{name}"
        if self.broker.supports_rate_limit:
            return self.broker.reserve_rate_slot(key, interval=interval)
        backend = self.app.backend
        if backend.supports_rate_limit:
            return backend.reserve_rate_slot(key, interval=interval)
        now = time.time()
        previous = self._local_slots.get(name)
        slot = now if previous is None else max(now, previous + interval)
        self._local_slots[name] = slot
        return slot
