"""A circuit breaker: a server that stops answering costs one process seconds, not minutes.

Without one, every call to a result backend that accepts connections but never answers
waits out the socket timeout on each attempt of the retry loop (about a minute per
call with the defaults), and every call to one that refuses runs the whole reconnect
loop (about 6.5 s). One `CircuitBreaker` per server and process counts failed attempts:

- closed (the normal state): every call goes through; `threshold` failed attempts in a
  row open it, once the first of them is at least `min_outage` seconds old (a success in
  between starts again), so a server restart of a second or two is ridden out by the
  retry loop as before, while one that hangs opens it at its third timeout;
- open: calls fail at once, without touching the network, for `cool_down` seconds;
- half-open: after the cool-down one call (the probe) goes through, the others still
  fail at once; its success closes the breaker, its failure opens it again.

It logs once when it opens and once when it closes, never per call. The retry loop of
`connections.redis` consults it on every attempt (`allow`, `succeeded`, `failed`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, final

from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DEFAULT_COOL_DOWN", "DEFAULT_THRESHOLD", "MIN_OUTAGE", "BreakerStats", "CircuitBreaker"]

logger = logging.getLogger("celeriac.connections")

# Failed attempts in a row that open the breaker.
DEFAULT_THRESHOLD: Final = 3
# Seconds an open breaker fails calls at once before it lets one probe through.
DEFAULT_COOL_DOWN: Final = 5.0
# Seconds a streak of failures must last before it opens the breaker.
MIN_OUTAGE: Final = 2.0

# A probe that neither succeeded nor failed this long ago (its thread was interrupted by
# something else) no longer stops another one.
PROBE_STALE: Final = 60.0

State = Literal["closed", "open", "half-open"]


@final
@dataclass(frozen=True, slots=True)
class BreakerStats:
    """A breaker's state, for `stats()` readers."""

    state: State
    failures: int
    times_opened: int


@final
class CircuitBreaker:
    """Fails calls to `name` at once while it does not answer (see the module docstring).

    Args:
        name: What the server is, for the log lines ("result backend at 10.0.0.5:6379").
        threshold: Failed attempts in a row that open it (0: never opens).
        cool_down: Seconds it stays open before one probe goes through.
        min_outage: Seconds a streak of failures must last before it opens.
        clock: Monotonic seconds (injected by tests).
    """

    def __init__(
        self,
        name: str,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        cool_down: float = DEFAULT_COOL_DOWN,
        min_outage: float = MIN_OUTAGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 0 or cool_down < 0:
            raise ImproperlyConfigured(
                f"circuit breaker of {name}: circuit_breaker_threshold and "
                f"circuit_breaker_cool_down must not be negative (got {threshold} and {cool_down})"
            )
        self.name = name
        self.threshold = threshold
        self.cool_down = cool_down
        self.min_outage = min_outage
        self._clock = clock
        self._first_failure = 0.0
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._first_opened_at = 0.0
        self._probing = False
        self._probe_started = 0.0
        self._times_opened = 0
        self._last_error = ""

    @property
    def state(self) -> State:
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self._state != "open":
            return 0.0
        return max(0.0, self._opened_at + self.cool_down - self._clock())

    def describe(self) -> str:
        """Why calls fail at once now, for error messages."""
        return (
            f"{self.name} failed {self._failures} time(s) in a row (last: {self._last_error}); "
            f"calls fail at once for {self.retry_in():.1f} s more, then one is tried"
        )

    def allow(self) -> bool:
        """May a call go out now? True for a closed breaker, and for the one probe."""
        if self._state == "closed":  # the fast path: no lock
            return True
        with self._lock:
            return self._admit()

    def _admit(self) -> bool:
        """`allow` under the lock."""
        if self._state == "closed":
            return True
        now = self._clock()
        if self._probing and now - self._probe_started < PROBE_STALE:
            return False
        if self._state == "open" and now - self._opened_at < self.cool_down:
            return False
        self._state = "half-open"
        self._probing = True
        self._probe_started = now
        return True

    def succeeded(self) -> None:
        """The server answered (even with an error of its own)."""
        if self._state == "closed" and not self._failures:  # the fast path: no lock
            return
        with self._lock:
            was = self._state
            self._state = "closed"
            self._failures = 0
            self._probing = False
        if was != "closed":
            logger.warning(
                "%s answers again after %.1f s; calls to it go through again",
                self.name,
                self._clock() - self._first_opened_at,
            )

    def failed(self, error: BaseException) -> bool:
        """An attempt could not reach the server; True when the breaker is open now."""
        with self._lock:
            now = self._clock()
            self._failures += 1
            if self._failures == 1:
                self._first_failure = now
            self._last_error = str(error) or type(error).__name__
            if self._state == "closed" and (
                not self.threshold
                or self._failures < self.threshold
                or now - self._first_failure < self.min_outage
            ):
                return False
            opening = self._state == "closed"
            self._state = "open"
            self._probing = False
            self._opened_at = now
            if opening:
                self._first_opened_at = self._opened_at
                self._times_opened += 1
        if opening:
            logger.error(
                "%s did not answer %d time(s) in a row (last: %s): calls to it fail at once "
                "for %.1f s at a time, then one is tried, until it answers",
                self.name,
                self._failures,
                self._last_error,
                self.cool_down,
            )
        return True

    def stats(self) -> BreakerStats:
        return BreakerStats(self._state, self._failures, self._times_opened)
