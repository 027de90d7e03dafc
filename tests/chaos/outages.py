"""Shared pieces of the outage scenarios (broker restart, network faults, backend outage):
a paced producer that records confirmed publishes in the ledger and counts the ones that
raised, and the recovery-time measure "first finish after the fault cleared".
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.chaos.ledger import Ledger


@dataclass
class Producer:
    """Publishes `total` `work(ms)` tasks from a thread, `pause` seconds apart.

    An id goes into the ledger only after its publish returned; a publish that raised is
    counted in `errors` (never retried here: a raise is the producer being told).
    """

    tasks: Any
    ledger: Ledger
    total: int
    ms: int = 5
    pause: float = 0.01
    options: dict[str, Any] = field(default_factory=dict)
    confirmed: int = 0
    errors: list[BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None
    results: list[Any] = field(default_factory=list)

    def start(self) -> Producer:
        self.thread = threading.Thread(target=self._run, name="chaos-producer", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        for _ in range(self.total):
            try:
                result = self.tasks.work.apply_async((self.ms,), **self.options)
            except Exception as exc:  # the producer was told: counted, not lost
                self.errors.append(exc)
            else:
                self.ledger.published(result.id)
                self.results.append(result)
                self.confirmed += 1
            time.sleep(self.pause)

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the producer is stuck"

    @property
    def attempted(self) -> int:
        return self.confirmed + len(self.errors)


def first_finish_after(ledger: Ledger, moment: float) -> float | None:
    """Seconds from `moment` (epoch) to the first finish record at or after it."""
    times = [e["time"] for e in ledger.events() if e["event"] == "finish" and e["time"] >= moment]
    return min(times) - moment if times else None


def wait_all_finished(ledger: Ledger, timeout: float) -> bool:
    """Wait until every confirmed id has a finish record; True if they all did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(ledger.published_ids()) <= ledger.finished_ids():
            return True
        time.sleep(0.2)
    return False
