"""Shutdown with work in flight and prefetched: warm finishes, cold returns; nothing lost.

A worker with two children and a prefetch window of 4 each takes 8 of 12 `held` tasks:
2 run (3 s each), 6 wait prefetched, 4 stay in the queue. Then:

- warm (SIGTERM): the 6 prefetched are back in the queue while the 2 in flight still
  run; those 2 finish in the children that started them, once each, and the worker
  exits 0;
- cold (SIGQUIT, or SIGINT twice): the worker exits without finishing them, and all 8
  it held are back in the queue at once (the in-flight 2 started but never finished).

"At once" is checked by order, not by a clock: the messages are back while the tasks
in flight are still sleeping (warm) or before a new worker exists (cold). Afterwards a
fresh worker runs every published id: lost = 0, and no duplicate (a warm stop runs no
task twice; a cold one stops tasks before they finish).
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.chaos.harness import alive_descendants, fail_report, settle
from tests.helpers import wait_for
from tests.integration.conftest import import_tasks

if TYPE_CHECKING:
    from pathlib import Path

    from tests.chaos.ledger import Ledger
    from tests.integration.conftest import RunWorker

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(120)]

TASKS = 12
CHILDREN = 2
PREFETCH = 4
HOLD_MS = 3000


def _started(ledger: Ledger) -> dict[str, int]:
    return {e["id"]: e["pid"] for e in ledger.events() if e["event"] == "start"}


def _finished(ledger: Ledger) -> dict[str, int]:
    return {e["id"]: e["pid"] for e in ledger.events() if e["event"] == "finish"}


def _publish(tasks: Any, ledger: Ledger) -> list[str]:
    ids = []
    for _ in range(TASKS):
        result = tasks.held.delay(HOLD_MS)
        ledger.published(result.id)
        ids.append(result.id)
    return ids


@pytest.mark.parametrize("how", ["SIGTERM", "SIGQUIT", "SIGINT twice"])
def test_shutdown_returns_prefetched_and_loses_nothing(
    how: str, broker_env: str, ledger: Ledger, tasks_dir: Path, run_worker: RunWorker
) -> None:
    tasks = import_tasks(tasks_dir)
    queue = tasks.app.conf.task_default_queue
    broker = tasks.app.broker
    # Published first, so that each child's first fetch fills its window (a child
    # running a task inline fetches nothing more until it finishes).
    _publish(tasks, ledger)
    worker = run_worker("-c", str(CHILDREN), "--prefetch-multiplier", str(PREFETCH))
    held = CHILDREN * PREFETCH
    in_flight = wait_for(
        lambda: len(_started(ledger)) == CHILDREN and _started(ledger),
        timeout=20,
        what="tasks in flight",
    )
    # Every child has its window full once the queue is down to what nobody took.
    wait_for(lambda: broker.size(queue) == TASKS - held, timeout=10, what="windows full")
    worker.children()  # remember the pids for the orphan check
    if how == "SIGTERM":
        worker.signal(signal.SIGTERM)
        # The prefetched come back while the two in flight are still running.
        wait_for(
            lambda: broker.size(queue) == TASKS - CHILDREN,
            timeout=10,
            what="prefetched messages back in the queue",
        )
        assert not _finished(ledger), "prefetched were returned only after in-flight finished"
        assert worker.wait(timeout=30) == 0
        finished = _finished(ledger)
        assert finished == in_flight, "in-flight tasks did not finish in their own children"
    else:
        if how == "SIGQUIT":
            worker.signal(signal.SIGQUIT)
        else:
            worker.signal(signal.SIGINT)
            time.sleep(0.2)  # two separate signals, not one coalesced
            worker.signal(signal.SIGINT)
        assert worker.wait(timeout=15) == 0
        # Everything it held (running and prefetched) is back before anyone else exists.
        wait_for(lambda: broker.size(queue) == TASKS, timeout=5, what="all held returned")
        assert not _finished(ledger)
    assert not alive_descendants(worker.known_pids), "a child outlived its supervisor"
    # A new worker runs the rest; the `held` tasks end early once released.
    (tasks_dir / "release").touch()
    run_worker("-c", str(CHILDREN))
    report = settle(ledger, timeout=60)
    print(f"{how} on {broker_env}: {report.summary()}")
    if report.lost or report.duplicates or report.phantoms:
        fail_report(f"shutdown by {how}", report)
