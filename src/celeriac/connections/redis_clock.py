"""The Redis server's clock, carried forward locally on the monotonic clock.

Lease scores, ETA due times, revocation times and rate slots are shared records: every
host reads what the others wrote. Stamped with each host's wall clock, a host whose
clock is off (or stepped by NTP) makes the others steal its running tasks or keep lapsed
leases forever. `ServerClock.time()` reads the server's `TIME` once per `RESYNC` seconds
and adds the monotonic time elapsed since, so every host stamps with the server's clock
and a local step changes nothing. Until the first read succeeds it answers with the
local wall clock.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["RESYNC", "ServerClock"]

logger = logging.getLogger("celeriac.redis")

#: Seconds between two reads of the server's time.
RESYNC = 60.0
# Local and server clocks further apart than this are worth a warning (once).
SKEW_WARNING = 5.0


@final
class ServerClock:
    """Wall-clock seconds as the server counts them.

    Args:
        read: Returns the server's time (`TIME`) in seconds; may raise.
        resync: Seconds between two reads.
    """

    def __init__(self, read: Callable[[], float], *, resync: float = RESYNC) -> None:
        self._read = read
        self._resync = resync
        self._lock = threading.Lock()
        self._base: float | None = None
        self._synced_at = 0.0
        self._next_sync = float("-inf")
        self._warned = False

    def time(self) -> float:
        if time.monotonic() >= self._next_sync:
            self._sync()
        if self._base is None:
            return time.time()
        return self._base + (time.monotonic() - self._synced_at)

    def monotonic(self) -> float:
        return time.monotonic()

    def _sync(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is reading it; carry on meanwhile
        try:
            before = time.monotonic()
            if before < self._next_sync:
                return
            # Whatever happens, the next read is one period away (a server that is
            # down is not asked on every call).
            self._next_sync = before + self._resync
            try:
                server = self._read()
            except Exception as exc:  # isolation boundary: keep the last base
                logger.debug("cannot read the server's time now: %s", exc)
                return
            after = time.monotonic()
            # The server read its clock about halfway through the round trip.
            self._base = server + (after - before) / 2
            self._synced_at = after
            skew = abs(server - time.time())
            if skew > SKEW_WARNING and not self._warned:
                self._warned = True
                logger.warning(
                    "this host's clock is %.1f s off the Redis server's; shared times "
                    "(leases, ETAs, revocations) follow the server's",
                    skew,
                )
        finally:
            self._lock.release()


def read_server_time(client: object) -> float:
    """The `TIME` of a redis-py client, in seconds."""
    seconds, micros = client.time()  # type: ignore[attr-defined]
    return float(seconds) + float(micros) / 1e6
