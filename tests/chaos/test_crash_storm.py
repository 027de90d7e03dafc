"""Crash storm: children and a supervisor SIGKILLed again and again while work flows.

`size(1_200, 10_000)` tasks of 5-50 ms (drawn from the seeded generator) go to two
workers of two children each. Every 0.5 s a random child of either worker is SIGKILLed;
every 3 s worker A's supervisor is SIGKILLed and A is started again. Worker B's
supervisor is never killed: it keeps running throughout. (1,200 tasks keep the storm
going for 10-15 s: some 20-30 child kills and 3-5 supervisor kills.)

Checked: lost = 0; no orphan (every child of a killed supervisor exits by itself); and
duplicate runs within the bound the design gives:

- a SIGKILLed child held one running task; its result was not stored, so the copy the
  supervisor returns can run again: at most 1 duplicate per child kill (prefetched,
  unstarted messages never ran; a finished task whose ack was still buffered has its
  result stored, and its copy is dropped without running);
- a SIGKILLed supervisor's children each notice within a keeper tick, return all they
  hold and exit mid-task: at most 1 duplicate per child, so 2 per supervisor kill.

So duplicate runs <= child kills + 2 * supervisor kills.

When the child killed in a tick belongs to the supervisor killed in the same tick, nobody
is left to return that child's messages at once: they come back when their lease lapses
(the visibility timeout), as the design promises and as with Celery. The test sets the
visibility timeout to 10 s so that this path is exercised within its time; with the
defaults (300 s on SQLite, 3,600 s on Redis) those messages wait that long. RabbitMQ
returns them when the child's connection drops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

import pytest

from tests.chaos.conftest import SEEDS, size
from tests.chaos.harness import alive_descendants, fail_report, publish_work, settle
from tests.helpers import wait_for
from tests.integration.conftest import import_tasks

if TYPE_CHECKING:
    import random
    from pathlib import Path

    from tests.chaos.ledger import Ledger
    from tests.integration.conftest import RunWorker

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(1800)]

CHILDREN = 2
CHILD_KILL_EVERY = 0.5
SUPERVISOR_KILL_EVERY = 3.0
# Short, so that the messages of a child killed with its supervisor come back in time.
VISIBILITY_TIMEOUT = 10


def test_a_crash_storm_loses_nothing(
    broker_env: str,
    ledger: Ledger,
    tasks_dir: Path,
    run_worker: RunWorker,
    rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setenv("TEST_VISIBILITY_TIMEOUT", str(VISIBILITY_TIMEOUT))
    tasks = import_tasks(tasks_dir)
    count = size(1_200, 10_000)
    publish_work(tasks, ledger, count, ms=(5, 50), rng=rng)
    worker_a = run_worker("-c", str(CHILDREN))
    worker_b = run_worker("-c", str(CHILDREN))
    orphan_suspects: set[int] = set()
    child_kills = supervisor_kills = 0
    began = time.monotonic()
    next_supervisor_kill = began + SUPERVISOR_KILL_EVERY
    # The storm lasts until everything ran once; settling afterwards checks the rest.
    deadline = began + size(120, 1500)
    while ledger.check().lost and time.monotonic() < deadline:
        time.sleep(CHILD_KILL_EVERY)  # the fault schedule's clock, not a wait for a result
        children = worker_a.children() + worker_b.children()
        if children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(children), signal.SIGKILL)
                child_kills += 1
        if time.monotonic() >= next_supervisor_kill:
            next_supervisor_kill += SUPERVISOR_KILL_EVERY
            orphan_suspects.update(worker_a.children())
            worker_a.signal(signal.SIGKILL)
            worker_a.wait(timeout=10)
            supervisor_kills += 1
            worker_a = run_worker("-c", str(CHILDREN), wait=False)
    storm = time.monotonic() - began
    report = settle(ledger, timeout=60)
    wait_for(
        lambda: not alive_descendants(orphan_suspects),
        timeout=10,
        what="every child of a killed supervisor to exit",
    )
    bound = child_kills + CHILDREN * supervisor_kills
    kills = child_kills + supervisor_kills
    print(
        f"crash storm on {broker_env}: {report.summary()} child_kills={child_kills} "
        f"supervisor_kills={supervisor_kills} duplicates_per_kill="
        f"{report.duplicate_runs / max(1, kills):.2f} bound={bound} storm={storm:.1f}s"
    )
    if report.lost or report.phantoms:
        fail_report("crash storm", report, SEEDS.get(request.node.nodeid))
    if report.duplicate_runs > bound:
        fail_report(f"duplicates over the bound {bound}", report, SEEDS.get(request.node.nodeid))
