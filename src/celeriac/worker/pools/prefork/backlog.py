"""`BacklogGauge`: how many messages wait in a worker's queues, for the autoscaler.

The supervisor's loop must never block on the broker (it replaces dead children and
enforces hard time limits), so the queues are measured on a thread of their own, with a
broker connection of their own, only while the autoscaler asks (every child is full). A
measure older than `STALE_AFTER` counts as nothing: a broker that does not answer leaves
the load at what the children hold.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Callable

    from celeriac.brokers.base import Broker

__all__ = ["BacklogGauge"]

logger = logging.getLogger("celeriac.worker")

# How long the thread waits for a request before looking at `stop` again.
WAIT = 0.5
# A measure older than this is not used.
STALE_AFTER = 3.0


@final
class BacklogGauge:
    """Measures the backlog of `queues` on request, on its own thread.

    Args:
        open_broker: Makes the gauge's own broker (connected lazily, closed on `stop`).
        queues: The worker's queues.
        clock: Monotonic seconds (injected in tests).
    """

    def __init__(
        self,
        open_broker: Callable[[], Broker],
        queues: tuple[str, ...],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open_broker = open_broker
        self._broker: Broker | None = None
        self.queues = queues
        self._clock = clock
        self._asked = threading.Event()
        self._stop = threading.Event()
        self._value = 0
        self._measured_at: float | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="celeriac-backlog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._asked.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._broker is not None:
            try:
                self._broker.close()
            except Exception:  # closing is best effort
                logger.debug("error while closing the backlog gauge's broker", exc_info=True)

    def latest(self) -> int:
        """Ask for a fresh measure; return the last one if it is recent, else 0."""
        self._asked.set()
        measured_at = self._measured_at
        if measured_at is None or self._clock() - measured_at > STALE_AFTER:
            return 0
        return self._value

    def measure(self) -> None:
        """Measure once, now (what the thread does when asked)."""
        if self._broker is None:
            self._broker = self._open_broker()
        value = sum(self._broker.size(queue) for queue in self.queues)
        self._value, self._measured_at = value, self._clock()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._asked.wait(WAIT):
                continue
            self._asked.clear()
            if self._stop.is_set():
                return
            try:
                self.measure()
            except Exception:  # isolation boundary: the load is then what children hold
                logger.debug("Could not measure the queues' backlog", exc_info=True)
            self._stop.wait(WAIT)
