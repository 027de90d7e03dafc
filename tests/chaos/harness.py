"""Small pieces the chaos tests of this suite share: publishing into the ledger, waiting
for the ledger to settle, reading what a worker logged, and process trees.

Kept apart from `ledger.py` and `conftest.py` (which other chaos modules use as they are).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import psutil
import pytest

if TYPE_CHECKING:
    from tests.chaos.ledger import Ledger, Report
    from tests.integration.conftest import WorkerProcess

__all__ = [
    "alive_descendants",
    "crash_count",
    "fail_report",
    "publish_work",
    "settle",
]


def publish_work(
    tasks: Any,
    ledger: Ledger,
    count: int,
    *,
    ms: int | tuple[int, int] = 5,
    countdown: float | None = None,
    rng: Any = None,
) -> list[str]:
    """Publish `count` `work` tasks and record each in the ledger once its publish
    returned. `ms` is a duration or a (low, high) range drawn from `rng`."""
    ids = []
    for _ in range(count):
        duration = ms if isinstance(ms, int) else rng.randint(*ms)
        if countdown is None:
            result = tasks.work.delay(duration)
            ledger.published(result.id)
        else:
            eta = time.time() + countdown
            result = tasks.work.apply_async((duration,), {"eta": eta}, countdown=countdown)
            ledger.published(result.id, eta)
        ids.append(result.id)
    return ids


def settle(ledger: Ledger, *, timeout: float) -> Report:
    """Wait until every published id finished (or `timeout` passed); the ledger's report."""
    deadline = time.monotonic() + timeout
    while True:
        report = ledger.check()
        if not report.lost or time.monotonic() > deadline:
            return report
        time.sleep(0.1)


def crash_count(worker: WorkerProcess, point: str) -> int:
    """How many processes of `worker` died at crash point `point` (from its log)."""
    return worker.output().count(f"crash point {point}: exiting now")


def alive_descendants(pids: set[int]) -> list[int]:
    """Those of `pids` still running (zombies count as gone)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def fail_report(what: str, report: Report, seed: object = None) -> None:
    """Fail with the ledger summary (and the seed when there is one)."""
    suffix = f" CHAOS_SEED={seed}" if seed is not None else ""
    pytest.fail(f"{what}: {report.summary()}{suffix}")
