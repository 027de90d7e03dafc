"""ETA tasks survive the death of every worker, and are never run early or twice by timing.

1. `size(1000, 1000)` tasks with countdowns of 1-5 s; two workers (two children each).
   Twice while they wait, every process of every worker (supervisors and children at
   once) is SIGKILLed, and the workers are started again. All must run, none before its
   ETA. With every process killed at once nobody returns the leases of the messages the
   children held (promoted, prefetched or running): they come back when their lease
   lapses, so the visibility timeout is set short (4 s). On RabbitMQ the server returns
   them when the connections drop and its delay ladder holds the rest. The ETA makes
   nothing run twice: a duplicate must follow a finish in a killed process (one each).
2. ETA longer than the visibility timeout (2 s) with no crash: 20 tasks due in 3 s, one
   worker. Zero duplicates: the ETA waits in the broker (delayed set, ETA column or delay
   ladder), not in a worker's lease that could lapse.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

import pytest

from tests.chaos.conftest import SEEDS, size
from tests.chaos.harness import (
    alive_descendants,
    fail_report,
    publish_work,
    settle,
    unexplained_duplicates,
)
from tests.helpers import wait_for
from tests.integration.conftest import import_tasks

if TYPE_CHECKING:
    import random
    from pathlib import Path

    from tests.chaos.ledger import Ledger
    from tests.integration.conftest import RunWorker, WorkerProcess

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(300)]


def _kill_everything(workers: list[WorkerProcess]) -> set[int]:
    """SIGKILL every supervisor and every child at the same moment; the pids killed."""
    pids = [pid for worker in workers for pid in (worker.pid, *worker.children())]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for worker in workers:
        worker.wait(timeout=10)
    # Killed children have no one left to reap them but init; they must be gone.
    wait_for(lambda: not alive_descendants(set(pids)), timeout=10, what="killed processes gone")
    return set(pids)


def test_eta_tasks_survive_every_worker_being_killed(
    broker_env: str,
    ledger: Ledger,
    tasks_dir: Path,
    run_worker: RunWorker,
    rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setenv("TEST_VISIBILITY_TIMEOUT", "4")
    tasks = import_tasks(tasks_dir)
    count = size(1000, 1000)
    # Countdowns spread over 1-5 s (each drawn from the seeded generator).
    start = time.monotonic()
    for _ in range(count):
        countdown = 1 + 4 * rng.random()
        eta = time.time() + countdown
        result = tasks.work.apply_async((5,), {"eta": eta}, countdown=countdown)
        ledger.published(result.id, eta)
    publish_time = time.monotonic() - start

    def workers() -> list[WorkerProcess]:
        return [run_worker("-c", "2"), run_worker("-c", "2")]

    running = workers()
    killed: set[int] = set()
    for at in (1.5, 3.5):
        delay = start + publish_time + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # a point in the fault schedule, not a wait for a condition
        killed |= _kill_everything(running)
        last_kill = time.monotonic()
        running = workers()
    settle(ledger, timeout=60)
    # A copy that a killed process held comes back when its lease (4 s) lapses: watch for
    # twice that after the last kill, so that a duplicate it causes is seen.
    time.sleep(max(0.0, last_kill + 8 - time.monotonic()))
    report = ledger.check()
    seed = SEEDS.get(request.node.nodeid)
    print(f"ETA with 2 kills of every worker on {broker_env}: {report.summary()}")
    if report.lost or report.early or report.phantoms:
        fail_report("ETA tasks after killing every worker", report, seed)
    # The ETA itself never makes a task run twice; a task whose process was killed after
    # its body finished and before its result was stored may (one per killed process).
    wrong = unexplained_duplicates(ledger, report, killed)
    if wrong:
        fail_report(f"ETA tasks after killing every worker: {wrong}", report, seed)


def test_an_eta_longer_than_the_visibility_timeout_runs_once(
    broker_env: str,
    ledger: Ledger,
    tasks_dir: Path,
    run_worker: RunWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_VISIBILITY_TIMEOUT", "2")
    tasks = import_tasks(tasks_dir)
    run_worker("-c", "2")
    publish_work(tasks, ledger, 20, ms=5, countdown=3.0)
    report = settle(ledger, timeout=60)
    # One more visibility timeout: a copy redelivered by a lapsed lease would run now.
    time.sleep(2)
    report = ledger.check()
    print(f"ETA past the visibility timeout on {broker_env}: {report.summary()}")
    if report.lost or report.duplicates or report.early or report.phantoms:
        fail_report("ETA longer than the visibility timeout", report)
