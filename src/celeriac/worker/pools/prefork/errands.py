"""The supervisor's calls to the broker and the result backend, off its main loop.

What the supervisor does when a child dies (record a time limit failure, count a
crash, return the child's messages) talks to servers that may hang. Those calls run
here, in order, on one thread of its own, so the main loop keeps reaping children,
enforcing hard time limits and respawning whatever the servers do. Order is kept: a time
limit failure is recorded before the message it belongs to comes back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Errands"]

logger = logging.getLogger("celeriac.worker")


@final
class Errands:
    """Jobs run one after the other on a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._jobs: deque[tuple[str, Callable[[], object]]] = deque()
        self._changed = threading.Condition()
        self._busy = False
        self._thread: threading.Thread | None = None

    def submit(self, what: str, job: Callable[[], object]) -> None:
        """Run `job` after the ones before it; `what` names it in logs."""
        with self._changed:
            self._jobs.append((what, job))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="celeriac-errands", daemon=True
                )
                self._thread.start()
            self._changed.notify_all()

    def pending(self) -> int:
        """Jobs not finished yet (the one running included)."""
        with self._changed:
            return len(self._jobs) + self._busy

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every job to finish; True if they did."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._jobs or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._jobs:
                    self._changed.wait()
                what, job = self._jobs.popleft()
                self._busy = True
            try:
                job()
            except Exception:  # isolation boundary: the next errand still runs
                logger.exception("Supervisor errand failed: %s", what)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()
