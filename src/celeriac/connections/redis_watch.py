"""`KeyWatcher`: a Redis connection that reports writes to a set of keys (client-side
caching tracking in BCAST mode), so a waiting consumer wakes when anyone pushes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import redis
import redis.exceptions as redis_errors

from celeriac.connections.redis import DEFAULT_SOCKET_TIMEOUT, new_connection

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["INVALIDATE_CHANNEL", "PING_AFTER", "KeyWatcher", "disjoint_prefixes"]

# A wake-up connection silent this long is PINGed (it must answer within the timeout).
PING_AFTER = 2.0
# Redis publishes client-side-caching invalidations here (RESP2 redirect mode).
INVALIDATE_CHANNEL = "__redis__:invalidate"


def disjoint_prefixes(keys: Iterable[bytes]) -> list[bytes]:
    """The fewest prefixes covering `keys` with none a prefix of another (Redis refuses
    overlapping BCAST prefixes on one connection)."""
    kept: list[bytes] = []
    for key in sorted(keys):
        if not kept or not key.startswith(kept[-1]):
            kept.append(key)
    return kept


class KeyWatcher:
    """Wakes a waiting thread when any of the watched keys is written, by anyone.

    One dedicated connection turns on client-side-caching tracking in BCAST mode for the
    watched keys' prefixes, redirected to itself, and subscribes to Redis's invalidation
    channel: every write to a watched key (LPUSH, RPUSH, ZADD, DEL...) produces a message
    naming it within the server's event-loop iteration. Nothing is read from the keys, so
    waiting takes nothing from them. Needs Redis >= 6 and the CLIENT command; raises
    redis-py's ResponseError when the server refuses tracking.
    """

    def __init__(self, pool: redis.ConnectionPool, watched: frozenset[bytes]) -> None:
        self.watched = watched
        self._conn: Any = None
        conn = new_connection(pool, health_check_interval=0)
        try:
            conn.connect()
            conn.send_command("CLIENT", "ID")
            client_id = conn.read_response()
            prefixes: list[bytes] = []
            for prefix in disjoint_prefixes(watched):
                prefixes += [b"PREFIX", prefix]
            conn.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", *prefixes)
            conn.read_response()
            conn.send_command("SUBSCRIBE", INVALIDATE_CHANNEL)
            conn.read_response()
        except BaseException:
            conn.disconnect()
            raise
        self._conn = conn
        self._heard = time.monotonic()
        self._ping_sent: float | None = None
        timeout = pool.connection_kwargs.get("socket_timeout")
        self._ping_timeout = float(timeout) if timeout else DEFAULT_SOCKET_TIMEOUT

    def _relevant(self, reply: Any) -> bool:
        if not isinstance(reply, list) or len(reply) < 3 or reply[0] != b"message":
            return False
        keys = reply[2]
        # None: the whole database was flushed (or tracking broke); look again.
        return keys is None or any(key in self.watched for key in keys)

    def _read(self) -> Any:
        reply = self._conn.read_response()
        self._heard = time.monotonic()
        self._ping_sent = None
        return reply

    def _check_alive(self) -> None:
        """PING a connection silent for `PING_AFTER` seconds; raise when a PING stayed
        unanswered for the socket timeout. A subscriber otherwise never writes, so a
        dead link (a peer gone without a FIN) would look like a quiet one for ever."""
        now = time.monotonic()
        if self._ping_sent is not None:
            if now - self._ping_sent > self._ping_timeout:
                raise redis_errors.TimeoutError(
                    f"the wake-up connection did not answer a PING in {self._ping_timeout:g} s"
                )
        elif now - self._heard >= PING_AFTER:
            self._conn.send_command("PING")
            self._ping_sent = now

    def drain(self) -> None:
        """Discard notifications already received (the coming fetch covers them)."""
        conn = self._conn
        while conn.can_read(timeout=0):
            self._read()
        self._check_alive()

    def wait(self, timeout: float) -> bool:
        """Block until a watched key changes (True) or `timeout` passes (False).

        Raises redis-py's TimeoutError when the connection stopped answering.
        """
        deadline = time.monotonic() + timeout
        conn = self._conn
        while True:
            self._check_alive()
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return False
            step = min(remaining, PING_AFTER)
            if self._ping_sent is not None:
                step = min(step, max(0.0, self._ping_sent + self._ping_timeout - now) + 0.01)
            if not conn.can_read(timeout=step):
                continue
            if self._relevant(self._read()):
                return True

    def close(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None
