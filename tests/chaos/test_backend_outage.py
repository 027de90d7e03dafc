"""Scenario 9: the result backend goes away while tasks run.

Results live in a private `redis-server` (so it can be stopped); the broker is SQLite,
the shared Redis or the shared RabbitMQ (`broker_env`). While the backend is down the
worker keeps running tasks and spools their results (src/celeriac/worker/spool.py);
each task's message stays leased until its result lands, then it is acked.

- A short outage (small profile: 8 s; full profile: 30 s, the issue's figure), within
  the worker's result retry budget (`result_backend_max_retry_time`, default 60 s):
  tasks still run during it, and once the backend is back every `AsyncResult.get`
  returns the task's value.
- A longer outage than the retry budget: the budget is `result_backend_max_retry_time`
  counted from the first write attempt, plus at most one reconnect loop of the backend
  (about 6.5 s on Redis by default). The test sets the budget to 2 s and the reconnect
  loop to 3 retries (0.35 s), and stops the backend for 5 s: the task still ran, and
  its result is recorded as lost explicitly:
  `AsyncResult.get` raises `ResultLost` and the state is FAILURE, never a silent None
  or an endless PENDING.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from celeriac import states
from celeriac.exceptions import ResultLost
from tests.chaos.conftest import size
from tests.chaos.outages import Producer, wait_all_finished
from tests.helpers import ONE_BROKER, wait_for
from tests.integration.conftest import import_tasks
from tests.private_servers import PrivateRedis, require_redis_server

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.chaos.ledger import Ledger
    from tests.integration.conftest import RunWorker

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.integration,
    pytest.mark.timeout(size(120, 1200)),
]

OUTAGE = float(size(8, 30))
# The long outage: longer than the retry budget the test gives the worker.
RETRY_BUDGET = 2.0
LONG_OUTAGE = 5.0


@pytest.fixture
def results_server(
    broker_env: str, tasks_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PrivateRedis]:
    """A private redis-server holding the results (the broker is `broker_env`'s)."""
    require_redis_server()
    directory = tasks_dir.parent / "results"
    directory.mkdir()
    server = PrivateRedis(directory)
    try:
        server.start()
        monkeypatch.setenv("TEST_BACKEND_URL", server.url)
        yield server
    finally:
        server.stop()


def test_tasks_run_through_a_backend_outage_and_their_results_land_after(
    results_server: PrivateRedis, ledger: Ledger, tasks_dir: Path, run_worker: RunWorker
) -> None:
    tasks = import_tasks(tasks_dir)
    started = time.monotonic()
    worker = run_worker("-c", "2")
    total = size(150, 1500)
    producer = Producer(tasks, ledger, total=total, ms=5, pause=OUTAGE / total * 1.5)
    producer.start()
    wait_for(lambda: len(ledger.finished_ids()) >= 10, timeout=30, what="first finishes")
    results_server.stop()
    down_at = time.time()
    time.sleep(OUTAGE)
    during = sum(
        1 for e in ledger.events() if e["event"] == "finish" and e["time"] >= down_at + 0.5
    )
    results_server.start()
    back = time.monotonic()
    producer.join(timeout=120)
    assert wait_all_finished(ledger, timeout=size(60, 300)), ledger.check().summary()
    values = [result.get(timeout=60) for result in producer.results]
    landed = time.monotonic() - back
    report = ledger.check()
    print(
        f"\noutage {OUTAGE:g}s: {during} tasks finished while the backend was down; "
        f"all {len(values)} results stored {landed:.1f}s after it was back; raised="
        f"{len(producer.errors)} {report.summary()} wall={time.monotonic() - started:.1f}s"
    )
    detail = f"{report.summary()}\n{worker.output()[-3000:]}"
    assert report.lost == [], detail
    assert producer.errors == []
    assert during > 0, f"no task ran while the backend was down\n{detail}"
    # A write did fail during the outage and went to the spool (spool.py logs it).
    assert "keeping the result and retrying in the background" in worker.output(), detail
    assert values == [result.id for result in producer.results]
    assert worker.process.poll() is None, detail


# The spool and its budget are the same on every broker: Redis by default, the others in
# the full profile (about 9 s each).
@pytest.mark.parametrize("broker_env", ONE_BROKER, indirect=True)
def test_a_longer_outage_than_the_retry_budget_marks_the_result_lost(
    results_server: PrivateRedis,
    ledger: Ledger,
    tasks_dir: Path,
    run_worker: RunWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_RESULT_MAX_RETRY", str(RETRY_BUDGET))
    tasks = import_tasks(tasks_dir)
    worker = run_worker("-c", "1")
    first = tasks.work.delay(1)
    assert first.get(timeout=30) == first.id  # the backend works
    results_server.stop()
    producer = Producer(tasks, ledger, total=5, ms=1, pause=0.05).start()
    producer.join(timeout=60)
    assert producer.errors == []
    assert wait_all_finished(ledger, timeout=30), ledger.check().summary()
    time.sleep(LONG_OUTAGE)
    results_server.start()
    outcomes: list[str] = []
    for result in producer.results:
        with pytest.raises(ResultLost, match="could not be stored"):
            result.get(timeout=30)
        outcomes.append(result.state)
    report = ledger.check()
    print(f"\nlong outage {LONG_OUTAGE:g}s > budget {RETRY_BUDGET:g}s: states={outcomes}")
    assert outcomes == [states.FAILURE] * len(producer.results)
    assert report.lost == [], report.summary()
    assert "recorded as lost" in worker.output()
    # The worker goes on: a task after the outage stores its result as usual.
    last = tasks.work.delay(1)
    assert last.get(timeout=30) == last.id
