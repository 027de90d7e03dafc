"""Result writes that wait out a result backend outage, so tasks keep running meanwhile.

A write (the result, then the chord part it reports) that fails because the backend
cannot be reached goes to the spool; a background thread retries the spool in order,
with backoff. While anything is spooled, new writes queue behind it, so they reach the
backend in the order they were made (a late RETRY never overwrites a later FAILURE).

The task's message stays leased (and renewed) but out of the prefetch window until its
write lands, so the worker keeps fetching and running; it is acked only then. A worker
that dies meanwhile returns those messages and they run again: nothing is lost. A write
still failing `max_age` seconds after its first attempt is replaced by a small
`ResultLost` failure, written when the backend returns: the reader sees an explicit
failure, never a silent PENDING. The spool holds at most `max_items` writes; past that
the consumer stops fetching until it drains.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from celeriac.exceptions import BackendError

__all__ = ["ResultSpool"]

logger = logging.getLogger("celeriac.worker")

# Backoff between retries of the oldest spooled write.
RETRY_START = 0.1
RETRY_MAX = 2.0
# Spooled writes beyond this make the consumer stop fetching.
MAX_ITEMS = 10_000

Action = Callable[[], None]


@dataclass(slots=True)
class _Pending:
    label: str
    write: Action
    lost: Action
    done: Action
    since: float
    given_up: bool = False


class ResultSpool:
    """Writes that could not reach the result backend, retried in the background.

    Args:
        max_age: Seconds after which a spooled write is replaced by its `lost` write.
        max_items: How many writes may wait before the consumer should stop fetching.
    """

    def __init__(self, *, max_age: float, max_items: int = MAX_ITEMS) -> None:
        self.max_age = max_age
        self.max_items = max_items
        self._queue: deque[_Pending] = deque()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def is_full(self) -> bool:
        return len(self._queue) >= self.max_items

    def submit(self, label: str, write: Action, *, lost: Action, done: Action) -> bool:
        """Run `write` now, or spool it when the backend is down.

        Args:
            label: What the write is, for logs ("tasks.add[<id>] SUCCESS").
            write: The backend calls (idempotent: they may run more than once).
            lost: What to write instead once `max_age` has passed.
            done: Called once the write (or its `lost` replacement) landed.

        Returns:
            True when it landed now (`done` was called), False when spooled.
        """
        first_attempt = time.monotonic()
        with self._lock:
            spooled = bool(self._queue)
        if not spooled:
            try:
                write()
            except BackendError as exc:
                logger.warning(
                    "%s: result backend unreachable (%s); keeping the result "
                    "and retrying in the background",
                    label,
                    exc,
                )
            else:
                done()
                return True
        with self._lock:
            # The budget counts from the first attempt (which may itself have spent the
            # backend's reconnect loop), as the module docstring promises.
            self._queue.append(_Pending(label, write, lost, done, first_attempt))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._retry, name="celeriac-spool", daemon=True
                )
                self._thread.start()
            self._lock.notify_all()
        return False

    def _retry(self) -> None:
        delay = RETRY_START
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait(1.0)
                if not self._queue:
                    return
                pending = self._queue[0]
            if not pending.given_up and time.monotonic() - pending.since > self.max_age:
                pending.given_up = True
                logger.error(
                    "%s: result backend unreachable for %.0fs; the result is recorded as lost",
                    pending.label,
                    self.max_age,
                )
            try:
                (pending.lost if pending.given_up else pending.write)()
            except BackendError:
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except Exception:  # isolation boundary: a write that can never succeed
                logger.exception("%s: result cannot be stored; dropped", pending.label)
            delay = RETRY_START
            with self._lock:
                self._queue.popleft()
                self._lock.notify_all()
            try:
                pending.done()
            except Exception:  # isolation boundary
                logger.exception("%s: acking after the result was stored failed", pending.label)

    def wait_empty(self, timeout: float) -> bool:
        """Give spooled writes up to `timeout` seconds to land; True if all did."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.1))
        return True

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
