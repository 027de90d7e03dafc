"""The throughput and latency charts' data: a ring of time buckets over the last hour.

This is the only state the dashboard loses on a restart (the rest is read from the
broker and the result backend on each request). One bucket per `BUCKET_SECONDS`; a
bucket counts the tasks that finished in it, how many failed, and the sum and maximum
of their runtimes and of their wait (received -> started) when the events say so.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["BUCKET_SECONDS", "WINDOW_SECONDS", "Bucket", "Series"]

# Seconds one bucket covers.
BUCKET_SECONDS = 10
# Seconds the charts look back.
WINDOW_SECONDS = 3600


@dataclass(slots=True)
class Bucket:
    """One time slice of finished tasks."""

    start: int
    succeeded: int = 0
    failed: int = 0
    runtime_sum: float = 0.0
    runtime_max: float = 0.0
    sent: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed

    @property
    def runtime_mean(self) -> float | None:
        return self.runtime_sum / self.finished if self.finished else None


class Series:
    """Buckets over the last `WINDOW_SECONDS`, thread-safe (the feed thread adds, the web
    handlers read)."""

    def __init__(self, *, bucket: int = BUCKET_SECONDS, window: int = WINDOW_SECONDS) -> None:
        self.bucket = bucket
        self.size = window // bucket
        self._buckets: list[Bucket | None] = [None] * self.size
        self._lock = threading.Lock()

    def _at(self, timestamp: float) -> Bucket:
        start = int(timestamp) // self.bucket * self.bucket
        slot = (start // self.bucket) % self.size
        current = self._buckets[slot]
        if current is None or current.start != start:
            current = self._buckets[slot] = Bucket(start)
        return current

    def add_finished(self, timestamp: float, *, failed: bool, runtime: float | None) -> None:
        with self._lock:
            bucket = self._at(timestamp)
            if failed:
                bucket.failed += 1
            else:
                bucket.succeeded += 1
            if runtime is not None and runtime >= 0:
                bucket.runtime_sum += runtime
                bucket.runtime_max = max(bucket.runtime_max, runtime)

    def add_sent(self, timestamp: float) -> None:
        with self._lock:
            self._at(timestamp).sent += 1

    def window(self, now: float) -> list[Bucket]:
        """Every bucket of the window ending at `now`, oldest first (empty ones too)."""
        last = int(now) // self.bucket * self.bucket
        first = last - (self.size - 1) * self.bucket
        with self._lock:
            by_start = {b.start: b for b in self._buckets if b is not None and b.start >= first}
            return [
                _copy(by_start.get(start)) or Bucket(start)
                for start in range(first, last + 1, self.bucket)
            ]


def _copy(bucket: Bucket | None) -> Bucket | None:
    if bucket is None:
        return None
    return Bucket(
        bucket.start,
        bucket.succeeded,
        bucket.failed,
        bucket.runtime_sum,
        bucket.runtime_max,
        bucket.sent,
    )
