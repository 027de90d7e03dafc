"""Killed celeriac workers on Redis lose nothing, with real processes.

- A SIGKILLed child holding a batch (one task running, the rest prefetched): its
  supervisor returns every message it held at once (not after the visibility timeout)
  and a new child runs them.
- A whole worker SIGKILLed (supervisor and child together, so nobody of its own is left
  to return its messages) while another celeriac worker is already running: the live
  worker's sweep restores the dead one's leases once they lapse (a short
  `visibility_timeout` here), and runs them. No worker is started after the kill.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any

import psutil
import pytest
import redis

from tests.helpers import REDIS_URL, wait_for
from tests.integration.conftest import RunWorker, import_tasks, wait_until_gone, write_tasks
from tests.integration.worker_tasks import SOURCE, events

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [
    pytest.mark.integration,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.parametrize("broker_env", ["redis"], indirect=True),
]

# The victims' batch: one long task that is running when the kill comes, three prefetched.
BATCH = [(3.0, "running"), (0.1, "prefetched-1"), (0.1, "prefetched-2"), (0.1, "prefetched-3")]


@pytest.fixture
def tasks(tasks_dir: Path, broker_env: str) -> Iterator[Any]:
    write_tasks(tasks_dir, SOURCE)
    module = import_tasks(tasks_dir)
    yield module
    module.app.close()


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(REDIS_URL)
    yield connection
    connection.close()


def starts(directory: Path, key: str) -> list[dict[str, Any]]:
    return [e for e in events(directory) if e["event"] == "start" and e["key"] == key]


def send_batch(tasks: Any, tasks_dir: Path, client: redis.Redis) -> list[Any]:
    """Send BATCH and wait until one child holds all of it, the first task running."""
    with tasks.app.producer_batch():  # one MULTI: the waiting child fetches all of it
        results = [tasks.sleeper.delay(seconds, key) for seconds, key in BATCH]
    prefix = os.environ["TEST_KEY_PREFIX"]
    wait_for(lambda: starts(tasks_dir, "running"), timeout=10, what="the first task")
    wait_for(
        lambda: client.hlen(prefix + "unacked") == len(BATCH),
        timeout=5,
        what="the whole batch leased",
    )
    assert [starts(tasks_dir, key) for _, key in BATCH[1:]] == [[], [], []]
    return results


def test_a_killed_childs_batch_comes_back_at_once_and_runs(
    tasks: Any, tasks_dir: Path, client: redis.Redis, run_worker: RunWorker
) -> None:
    # The visibility timeout stays at 300 s: only the supervisor can bring them back soon.
    worker = run_worker("-c", "1", "--prefetch-multiplier", "4")
    results = send_batch(tasks, tasks_dir, client)
    [victim] = worker.children()
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    assert [r.get(timeout=15) for r in results] == [key for _, key in BATCH]
    runs = {key: starts(tasks_dir, key) for _, key in BATCH}
    # The running task ran again (elsewhere); the prefetched ones ran once, after the kill.
    assert runs["running"][0]["pid"] == victim
    assert len(runs["running"]) == 2
    assert runs["running"][1]["pid"] != victim
    for _, key in BATCH[1:]:
        [run] = runs[key]
        assert run["pid"] != victim
        assert run["time"] - killed_at < 5
    assert runs["running"][1]["time"] - killed_at < 5
    assert f"Returned {len(BATCH)} message(s)" in worker.output()


def test_a_live_worker_restores_a_dead_workers_messages(
    tasks: Any, tasks_dir: Path, client: redis.Redis, run_worker: RunWorker
) -> None:
    visibility = 2.0
    env = {"TEST_VISIBILITY_TIMEOUT": str(visibility)}
    dead = run_worker("-c", "1", "--prefetch-multiplier", "4", "-n", "dead@%h", env=env)
    results = send_batch(tasks, tasks_dir, client)
    # The survivor starts now; the dead one holds everything, so it gets nothing yet.
    live = run_worker("-c", "1", "-n", "live@%h", env=env)
    wait_for(lambda: live.children(), timeout=5, what="the survivor's child")
    time.sleep(visibility)  # the dead worker renews its leases: nothing lapses
    assert [r.state for r in results] == ["PENDING"] * len(BATCH)
    assert len(starts(tasks_dir, "running")) == 1
    # Freeze the whole dead worker first, so neither its supervisor nor its child can
    # return anything, then kill both.
    victims = [dead.pid, *dead.children()]
    for pid in victims:
        os.kill(pid, signal.SIGSTOP)
    killed_at = time.time()
    for pid in reversed(victims):
        os.kill(pid, signal.SIGKILL)
    assert wait_until_gone(victims, timeout=5)
    assert [r.get(timeout=20) for r in results] == [key for _, key in BATCH]
    survivors = set(live.children())
    reruns = [starts(tasks_dir, key)[-1] for _, key in BATCH]
    assert {run["pid"] for run in reruns} <= survivors
    # Back within the visibility timeout of the last renewal, plus a sweep interval.
    restored_after = min(run["time"] for run in reruns) - killed_at
    print(f"restored after {restored_after:.2f} s")
    assert restored_after < visibility + 2.0, restored_after
    assert psutil.pid_exists(live.pid)
