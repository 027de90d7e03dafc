"""Small pieces the chaos tests of this suite share: publishing into the ledger, waiting
for the ledger to settle, reading what a worker logged, and process trees.

Kept apart from `ledger.py` and `conftest.py` (which other chaos modules use as they are).
"""

from __future__ import annotations

import re
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
    "crashed_pids",
    "fail_report",
    "publish_work",
    "settle",
    "unexplained_duplicates",
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


def crashed_pids(worker: WorkerProcess, point: str) -> set[int]:
    """The pids of `worker`'s processes that died at crash point `point` (from its log)."""
    found = re.findall(
        rf"crash point {re.escape(point)}: exiting now \(pid (\d+)\)", worker.output()
    )
    return {int(pid) for pid in found}


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


def unexplained_duplicates(ledger: Ledger, report: Report, dead: set[int]) -> list[str]:
    """The duplicate runs the design does not allow, described; empty when all are allowed.

    Duplicates come from one place only: a process that died after the task body finished
    but before its result was stored. So every finish of an id but its last must have
    been recorded by one of the `dead` pids, and each dead process can account for one
    such finish at most (it died right after it).
    """
    finishes: dict[str, list[int]] = {}
    for event in ledger.events():
        if event["event"] == "finish" and event["id"] in report.duplicates:
            finishes.setdefault(event["id"], []).append(event["pid"])
    wrong = []
    spent: dict[int, str] = {}
    for task_id, pids in finishes.items():
        for pid in pids[:-1]:
            if pid not in dead:
                wrong.append(f"{task_id} ran again after finishing in {pid}, which did not die")
            elif pid in spent:
                wrong.append(f"{spent[pid]} and {task_id} both ran again after finishing in {pid}")
            spent[pid] = task_id
    return wrong


def fail_report(what: str, report: Report, seed: object = None) -> None:
    """Fail with the ledger summary (and the seed when there is one)."""
    suffix = f" CHAOS_SEED={seed}" if seed is not None else ""
    pytest.fail(f"{what}: {report.summary()}{suffix}")
