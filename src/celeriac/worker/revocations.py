"""The revoked task ids a worker process knows, following the result backend's log.

`app.control.revoke(...)` appends to the backend's revocation log; each consuming process
reads what is new about once a second (a `RevocationFollower` thread of its own calls
`refresh`, so a result backend that hangs never holds up lease renewal or the prefork
supervisor's loop), so checking a task costs one set lookup. Ids are kept
`REVOCATION_TTL` (three hours) and at most `MAX_REVOKED` of them, like Celery's revoked
set. Backends without a log (`rpc://`) make this a no-op.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from celeriac.backends.base import REVOCATION_TTL
from celeriac.exceptions import BackendError

if TYPE_CHECKING:
    from collections.abc import Callable

    from celeriac.backends.base import ResultBackend, Revocation

__all__ = ["MAX_REVOKED", "RevocationFollower", "Revocations"]

logger = logging.getLogger("celeriac.worker")

# Celery's revoked set holds 50,000 ids.
MAX_REVOKED = 50_000


class Revocations:
    """Revoked task ids, refreshed from `backend`."""

    def __init__(self, backend: ResultBackend) -> None:
        self.backend = backend
        self._ids: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        # Start with everything the backend still remembers (it keeps `REVOCATION_TTL`):
        # a task revoked before this process started must not run here either. The
        # cursor and every age below are in the backend's times, never this host's
        # clock, so a host whose clock is off (or stepped) neither misses nor forgets.
        self._cursor = 0.0
        self._newest = 0.0
        self._failing = False

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, task_ids: list[str]) -> None:
        """Know these ids as revoked now (remote control; the log brings them too)."""
        # Stamped on the backend's timeline (the newest time it gave us), so pruning
        # keeps them as long as the logged ones; the local clock only before any refresh.
        now = self._newest or time.time()
        with self._lock:
            for task_id in task_ids:
                self._ids[task_id] = now

    def refresh(self) -> list[Revocation]:
        """Read new revocations; return them (the supervisor acts on `terminate`)."""
        if not self.backend.supports_revocation:
            return []
        try:
            found, cursor = self.backend.revoked_since(self._cursor)
        except BackendError as exc:
            # Once per outage: the backend's circuit breaker logs the rest.
            if not self._failing:
                logger.warning("Cannot read revocations now (%s); trying again every second", exc)
            self._failing = True
            return []
        except Exception:  # isolation boundary: try again on the next refresh
            logger.warning("Cannot read revocations now; trying again soon", exc_info=True)
            return []
        if self._failing:
            self._failing = False
            logger.warning("Reading revocations again")
        fresh = [r for r in found if r.task_id not in self._ids]
        self._newest = max([self._newest, cursor, *(r.at for r in found)])
        horizon = self._newest - REVOCATION_TTL
        with self._lock:
            for revocation in fresh:
                self._ids[revocation.task_id] = revocation.at
            while self._ids and (
                len(self._ids) > MAX_REVOKED or next(iter(self._ids.values())) < horizon
            ):
                self._ids.popitem(last=False)
            self._cursor = cursor
        if fresh:
            logger.info("Learned of %d revoked task(s)", len(fresh))
        return fresh


class RevocationFollower:
    """Calls `revocations.refresh()` every `interval` seconds on a thread of its own.

    Args:
        revocations: What to refresh.
        interval: Seconds between refreshes.
        on_fresh: Called (on the thread) with the revocations each refresh found.
    """

    def __init__(
        self,
        revocations: Revocations,
        *,
        interval: float,
        on_fresh: Callable[[list[Revocation]], object] | None = None,
    ) -> None:
        self.revocations = revocations
        self.interval = interval
        self.on_fresh = on_fresh
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, wait: float = 0.0) -> bool:
        """Start the thread; wait up to `wait` seconds for its first refresh to end (True
        if it did: a backend that hangs delays the caller by `wait` at most)."""
        self._thread = threading.Thread(
            target=self._follow, name="celeriac-revocations", daemon=True
        )
        self._thread.start()
        return self._first.wait(wait) if wait > 0 else self._first.is_set()

    def stop(self) -> None:
        """Stop the thread (not waiting for a call under way to a backend that hangs)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _follow(self) -> None:
        while True:
            try:
                fresh = self.revocations.refresh()
                if fresh and self.on_fresh is not None:
                    self.on_fresh(fresh)
            except Exception:  # isolation boundary: keep following whatever happens
                logger.exception("Revocation follower hiccup; continuing")
            self._first.set()
            if self._stop.wait(self.interval):
                return
