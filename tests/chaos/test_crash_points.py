"""Crash points: a worker process exits at one step of a task's life; nothing is lost.

`CELERIAC_CRASH_AT=<point>` (test-only, `celeriac._crashpoints`) makes every process of
worker A that reaches the point exit there at once (`os._exit`, no cleanup). Once A has
died there at least once, a clean worker B joins; every published id must finish. No id
may run twice, except at before_store (the body finished, its result was not stored):
there at most once per process that died at the point.

Points, and the step of the issue each stands for:

- after_fetch: a child leased a batch and died before running any of it (after fetch);
- before_run: died with the task taken from the batch, before its body ran;
- before_ack: ran the task, stored its result, died before the ack was sent (after run
  before ack);
- after_ack: the ack reached the broker, the process died before forgetting the message
  (during ack);
- before_store, after_store: died around the result write (during result write);
- before_promote, after_promote: died while the broker promoted due ETA messages (during
  ETA promotion: on SQLite inside the leasing transaction with the write lock held, on
  Redis before a fetch that promotes and after one that did, before handing them over);
- before_recover, after_recover: a child died (at before_ack) and the supervisor itself
  died while returning that child's messages (during lease recovery): the orphaned
  children return what they hold and exit, and the lapsed rest comes back.

RabbitMQ has no promotion and no recovery step in the worker (the server moves due
messages out of its delay ladder, and returns a dead consumer's messages when its
connection closes), so those four points do not exist there; the analogue, a consumer
dying with messages unacked, is what after_fetch, before_run and before_ack test on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.chaos.harness import (
    alive_descendants,
    crash_count,
    crashed_pids,
    fail_report,
    publish_work,
    settle,
    unexplained_duplicates,
)
from tests.helpers import wait_for
from tests.integration.conftest import import_tasks

if TYPE_CHECKING:
    from pathlib import Path

    from tests.chaos.ledger import Ledger
    from tests.integration.conftest import RunWorker

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(120)]

# Tasks per point: enough for a prefetched batch and some left for the clean worker.
TASKS = 12
# (point, extra crash spec that makes the point reachable, ETA countdown)
POINTS = [
    ("after_fetch", "", None),
    ("before_run", "", None),
    ("before_ack", "", None),
    ("after_ack", "", None),
    ("before_store", "", None),
    ("after_store", "", None),
    ("before_promote", "", 1.0),
    ("after_promote", "", 1.0),
    ("before_recover", "before_ack", None),
    ("after_recover", "before_ack", None),
]
SERVER_SIDE = {"before_promote", "after_promote", "before_recover", "after_recover"}
# Every point on every broker where the worker has that step (none of SERVER_SIDE on
# RabbitMQ, see the module docstring).
CASES = [
    pytest.param(broker, *point, id=f"{point[0]}-{broker}")
    for point in POINTS
    for broker in ("sqlite", "redis", "amqp")
    if not (broker == "amqp" and point[0] in SERVER_SIDE)
]


@pytest.mark.parametrize(
    ("broker_env", "point", "extra", "countdown"), CASES, indirect=["broker_env"]
)
def test_a_crash_at_each_step_loses_nothing(
    point: str,
    extra: str,
    countdown: float | None,
    broker_env: str,
    ledger: Ledger,
    tasks_dir: Path,
    run_worker: RunWorker,
) -> None:
    tasks = import_tasks(tasks_dir)
    spec = ",".join(filter(None, [point, extra]))
    # Two children where the supervisor is the one to die: one of them is orphaned.
    children = "2" if point.endswith("_recover") else "1"
    doomed = run_worker("-c", children, env={"CELERIAC_CRASH_AT": spec})
    # Published once A is consuming, so that A (not a slow start) sees the ETAs fall due.
    publish_work(tasks, ledger, TASKS, ms=20, countdown=countdown)
    # Polling the children also records every pid the worker had (for the orphan check).
    wait_for(
        lambda: doomed.children() is not None and crash_count(doomed, point) >= 1,
        timeout=30,
        what=f"a crash at {point}",
    )
    if point.endswith("_recover"):
        # The supervisor died at the point; its children must not outlive it.
        doomed.wait(timeout=10)
        wait_for(
            lambda: not alive_descendants(doomed.known_pids),
            timeout=10,
            what="the orphaned children to exit",
        )
    run_worker("-c", "2")
    report = settle(ledger, timeout=60)
    crashes = crash_count(doomed, point)
    print(f"{point} on {broker_env}: {report.summary()} crashes={crashes}")
    if report.lost or report.phantoms:
        fail_report(f"crash at {point}", report)
    if point != "before_store":
        # Every other point leaves either an unfinished body or a stored result behind
        # (a redelivered copy whose result is stored is dropped): nothing runs twice.
        if report.duplicates:
            fail_report(f"duplicates after a crash at {point}", report)
    else:
        # The body finished, its result was not stored: at most one run again per crash.
        wrong = unexplained_duplicates(ledger, report, crashed_pids(doomed, point))
        if wrong or report.duplicate_runs > crashes:
            fail_report(f"duplicates after a crash at {point} ({crashes} crashes): {wrong}", report)
