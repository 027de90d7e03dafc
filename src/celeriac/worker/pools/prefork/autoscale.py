"""How many children a prefork worker keeps: `--autoscale=max,min` following load, and the
`pool_grow`, `pool_shrink` and `autoscale` remote control commands.

`PoolSize` holds the number of children wanted. The remote control thread changes it;
the supervisor's loop reads it, forks children to reach it and retires the ones beyond
it (a retired child stops as in a warm shutdown: it stops fetching, gives back what it
prefetched at once and finishes what it runs, so no message is lost or run twice).

With `--autoscale` it follows Celery's autoscaler, once a second:

- the load (`qty`) is what the children hold, running or prefetched (Celery counts its
  reserved requests); when every child holds a full prefetch, the messages waiting in
  the worker's queues count too, since a child's holding says nothing of what waits
  behind it (with a prefetch multiplier of 1 it would never show more than one);
- more load than children grows the pool at once, up to max;
- less load shrinks it toward min once no message has come in for `keepalive` seconds
  (Celery's `AUTOSCALE_KEEPALIVE` environment variable, 30 s by default), and only by
  retiring children that hold nothing;
- a prefork child is the consumer, so at least one always stays: `min=0` keeps one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "CELERY_AUTOSCALER",
    "MAX_CHILDREN",
    "SCALE_INTERVAL",
    "PoolSize",
    "keepalive_from_env",
    "parse_autoscale",
]

logger = logging.getLogger("celeriac.worker")

# Celery's environment variable for the idle time before scaling down, and its default.
KEEPALIVE_ENV = "AUTOSCALE_KEEPALIVE"
DEFAULT_KEEPALIVE = 30.0
# How often the supervisor weighs the load (Celery's autoscaler thread sleeps a second).
SCALE_INTERVAL = 1.0
# The most children a prefork worker can grow to (its slot table is made before forking).
MAX_CHILDREN = 256
# Celery's default `worker_autoscaler`: the only autoscaler celeriac has.
CELERY_AUTOSCALER = "celery.worker.autoscale:Autoscaler"

# Celery's replies to resizing commands while autoscaling.
GROW_WITH_AUTOSCALE = "pool_grow is not supported with autoscale. Adjust autoscale range instead."
SHRINK_WITH_AUTOSCALE = (
    "pool_shrink is not supported with autoscale. Adjust autoscale range instead."
)


def parse_autoscale(value: str) -> tuple[int, int]:
    """Celery's `--autoscale`: `max,min` (in either order) or `max` (min 0) -> (max, min).

    Raises:
        ValueError: not one or two whole numbers, or out of range.
    """
    parts = [part.strip() for part in str(value).split(",")]
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise ValueError(
            f"--autoscale takes max,min (whole numbers, e.g. 10,3), got {value!r}"
        ) from None
    if len(numbers) > 2:
        raise ValueError(f"--autoscale takes max,min (two numbers at most), got {value!r}")
    if len(numbers) == 1:
        numbers.append(0)
    high, low = max(numbers), min(numbers)
    check_range(high, low)
    return high, low


def check_range(high: int, low: int) -> None:
    """Raise `ValueError` unless 1 <= max <= MAX_CHILDREN and 0 <= min <= max."""
    if high < 1:
        raise ValueError(f"autoscale max must be at least 1, got {high}")
    if high > MAX_CHILDREN:
        raise ValueError(f"autoscale max must be at most {MAX_CHILDREN} processes, got {high}")
    if low < 0:
        raise ValueError(f"autoscale min must be 0 or more, got {low}")
    if low > high:
        raise ValueError(f"autoscale min ({low}) is greater than max ({high})")


def keepalive_from_env(environ: Mapping[str, str] | None = None) -> float:
    """Seconds without new work before scaling down: `AUTOSCALE_KEEPALIVE`, as in Celery."""
    raw = (os.environ if environ is None else environ).get(KEEPALIVE_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_KEEPALIVE
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"{KEEPALIVE_ENV} must be a number of seconds, got {raw!r}") from None
    if seconds <= 0:
        raise ValueError(f"{KEEPALIVE_ENV} must be more than 0 seconds, got {raw!r}")
    return seconds


@final
class PoolSize:
    """The number of prefork children wanted; safe to change from any thread.

    Args:
        initial: Children to start with (without autoscale, the concurrency).
        autoscale: (max, min) to follow load between, or None for a fixed size that only
            `pool_grow`/`pool_shrink` change.
        keepalive: Seconds without new work before the autoscaler scales down.
        capacity: The most children there can be.
        clock: Monotonic seconds (injected in tests).
    """

    def __init__(
        self,
        initial: int,
        *,
        autoscale: tuple[int, int] | None = None,
        keepalive: float = DEFAULT_KEEPALIVE,
        capacity: int = MAX_CHILDREN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self.capacity = capacity
        self.keepalive = keepalive
        self._clock = clock
        self.max_concurrency: int | None = None
        self.min_concurrency: int | None = None
        if autoscale is not None:
            self.max_concurrency, self.min_concurrency = autoscale
            initial = max(1, self.min_concurrency)
        self.target = max(1, min(initial, capacity))
        # Children now (kept by the supervisor) and the load it weighed last (for `stats`).
        self.processes = 0
        self.qty = 0
        self._received = 0
        self._last_active: float | None = None

    @property
    def is_autoscaling(self) -> bool:
        return self.max_concurrency is not None

    # -- remote control ------------------------------------------------------------------

    def grow(self, n: int) -> None:
        """`pool_grow`: `n` more children (fixed-size pools only).

        Raises:
            ValueError: autoscaling, or past the most children there can be.
        """
        with self._lock:
            if self.is_autoscaling:
                raise ValueError(GROW_WITH_AUTOSCALE)
            if n < 0:
                raise ValueError(f"pool_grow takes a count of 0 or more, got {n}")
            if self.target + n > self.capacity:
                raise ValueError(
                    f"cannot grow the pool to {self.target + n} processes: at most {self.capacity}"
                )
            self.target += n

    def shrink(self, n: int) -> None:
        """`pool_shrink`: `n` fewer children (fixed-size pools only); idle ones go first,
        busy ones finish their task first.

        Raises:
            ValueError: autoscaling, or fewer than one child would be left.
        """
        with self._lock:
            if self.is_autoscaling:
                raise ValueError(SHRINK_WITH_AUTOSCALE)
            if n < 0:
                raise ValueError(f"pool_shrink takes a count of 0 or more, got {n}")
            if self.target - n < 1:
                raise ValueError(
                    f"cannot shrink the pool by {n}: it has {self.target} process(es) and "
                    "keeps at least one (prefork children are the consumers)"
                )
            self.target -= n

    def update(self, high: int | None, low: int | None) -> tuple[int, int]:
        """The `autoscale` command: a new max and/or min; returns (max, min).

        Raises:
            ValueError: not autoscaling (Celery's "Autoscale not enabled"), or out of range.
        """
        with self._lock:
            if self.max_concurrency is None or self.min_concurrency is None:
                raise ValueError("Autoscale not enabled")
            new_max = self.max_concurrency if high is None else high
            new_min = self.min_concurrency if low is None else low
            check_range(new_max, new_min)
            self.max_concurrency, self.min_concurrency = new_max, new_min
            self.target = max(max(1, new_min), min(self.target, new_max))
            return new_max, new_min

    # -- the supervisor's side -----------------------------------------------------------

    def observe(self, *, processes: int, qty: int, received: int) -> int:
        """Weigh the load once (autoscaling only); return the children now wanted.

        `processes` is how many children there are, `qty` what they hold (plus the
        backlog when they are full), `received` a count that grows whenever a child takes
        a message (finished plus held).
        """
        with self._lock:
            now = self._clock()
            self.processes, self.qty = processes, qty
            if received > self._received:
                self._last_active = now
            self._received = received
            if self.max_concurrency is None or self.min_concurrency is None:
                return self.target
            floor = max(1, self.min_concurrency)
            wanted = min(qty, self.max_concurrency)
            if wanted > processes:
                logger.info("Scaling up %d processes.", wanted - processes)
                self._last_active = now
                self.target = wanted
                return self.target
            wanted = max(qty, floor)
            idle_long = self._last_active is None or now - self._last_active > self.keepalive
            if wanted < processes and idle_long:
                if self.target != wanted:
                    logger.info("Scaling down %d processes.", processes - wanted)
                self.target = wanted
            else:
                self.target = max(floor, min(processes, self.max_concurrency))
            return self.target

    def wanted(self) -> int:
        with self._lock:
            return self.target

    def info(self) -> dict[str, Any] | None:
        """Celery's `stats()['autoscaler']`, or None when not autoscaling."""
        with self._lock:
            if self.max_concurrency is None:
                return None
            return {
                "max": self.max_concurrency,
                "min": self.min_concurrency,
                "current": self.processes,
                "qty": self.qty,
            }
