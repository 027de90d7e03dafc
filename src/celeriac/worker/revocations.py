"""The revoked task ids a worker process knows, following the result backend's log.

`app.control.revoke(...)` appends to the backend's revocation log; each consuming process
reads what is new about once a second (its keeper thread calls `refresh`), so checking a
task costs one set lookup. Ids are kept `REVOCATION_TTL` (three hours) and at most
`MAX_REVOKED` of them, like Celery's revoked set. Backends without a log (`rpc://`) make
this a no-op.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from celeriac.backends.base import REVOCATION_TTL

if TYPE_CHECKING:
    from celeriac.backends.base import ResultBackend, Revocation

__all__ = ["MAX_REVOKED", "Revocations"]

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
        except Exception:  # isolation boundary: try again on the next refresh
            logger.warning("Cannot read revocations now; trying again soon", exc_info=True)
            return []
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
