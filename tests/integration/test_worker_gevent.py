"""`worker -P gevent`: sync tasks on greenlets, on Redis and RabbitMQ.

A real worker process started as `python -m celeriac ... worker -P gevent`: the command
patches the standard library first thing, tasks block in plain `time.sleep` and run side
by side, time limits interrupt them, and a warm shutdown lets running tasks finish.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from celeriac.cli import EX_CONFIG
from celeriac.exceptions import TimeLimitExceeded
from celeriac.worker.options import EVENTLET_REFUSED
from tests.helpers import wait_for
from tests.integration.conftest import RunWorker, import_tasks, write_tasks
from tests.integration.worker_tasks import SOURCE, events

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

GEVENT_TASKS = """

@app.task
def patched():
    import socket
    import threading
    return [socket.socket.__module__, threading.Lock.__module__]
"""

# 200 tasks of 1 s each: one after another they take 200 s; on 200 greenlets about 1 s
# plus start-up and the round trips (2-4 s measured on a loaded two-core machine).
TASKS = 200
CONCURRENT_BOUND = 20.0


@pytest.fixture
def tasks(broker_env: str, tasks_dir: Path) -> Any:
    write_tasks(tasks_dir, SOURCE + GEVENT_TASKS)
    module = import_tasks(tasks_dir)
    yield module
    module.app.close()


@pytest.mark.parametrize("broker_env", ["redis", "amqp"], indirect=True)
def test_gevent_pool_runs_sleeping_tasks_at_once(
    tasks: Any, tasks_dir: Path, run_worker: RunWorker
) -> None:
    worker = run_worker("-P", "gevent", "-c", str(TASKS))
    assert "pool:         gevent (concurrency 200)" in worker.output()
    # The command patched before anything imported socket or threading.
    assert tasks.patched.delay().get(timeout=20) == ["gevent._socket3", "gevent.thread"]
    sent = time.monotonic()
    results = [tasks.sleeper.delay(1.0, f"s{n}") for n in range(TASKS)]
    assert [r.get(timeout=60) for r in results] == [f"s{n}" for n in range(TASKS)]
    elapsed = time.monotonic() - sent
    assert elapsed < CONCURRENT_BOUND, f"{TASKS} one-second tasks took {elapsed:.1f} s"
    # Every task slept in the one worker process, and most of them at the same time:
    # they had started before the first one ended.
    starts = [e for e in events(tasks_dir) if e["event"] == "start"]
    ends = [e for e in events(tasks_dir) if e["event"] == "end"]
    assert {e["pid"] for e in starts} == {worker.pid}
    first_end = min(_time(e) for e in ends)
    overlapping = len([e for e in starts if _time(e) < first_end])
    assert overlapping > TASKS // 2, overlapping


def _time(event: dict[str, object]) -> float:
    value = event["time"]
    assert isinstance(value, float)
    return value


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_gevent_pool_enforces_soft_and_hard_time_limits(
    tasks: Any, tasks_dir: Path, run_worker: RunWorker
) -> None:
    run_worker("-P", "gevent", "-c", "20")
    hard = tasks.hard.delay()  # time_limit=1, sleeps 10 s
    soft = tasks.soft.delay()  # soft_time_limit=0.5, sleeps 5 s
    beside = tasks.sleeper.delay(2.0, "beside")
    assert soft.get(timeout=20) == "soft limit caught"
    began = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        hard.get(timeout=20)
    # Raised in the task's greenlet while it slept: the body stopped there, the task
    # beside it was not disturbed, and the worker keeps running tasks.
    assert time.monotonic() - began < 9
    assert beside.get(timeout=20) == "beside"
    assert [e for e in events(tasks_dir) if e.get("key") == "hard" and e["event"] == "end"] == []
    assert tasks.sleeper.delay(0.1, "after").get(timeout=20) == "after"


@pytest.mark.parametrize("broker_env", ["redis", "amqp"], indirect=True)
def test_gevent_pool_warm_shutdown_finishes_running_tasks(
    tasks: Any, tasks_dir: Path, run_worker: RunWorker
) -> None:
    worker = run_worker("-P", "gevent", "-c", "50")
    results = [tasks.sleeper.delay(2.0, f"w{n}") for n in range(20)]
    wait_for(
        lambda: len([e for e in events(tasks_dir) if e["event"] == "start"]) == 20,
        timeout=30,
        what="20 tasks running",
    )
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, worker.output()
    ended = {e["key"] for e in events(tasks_dir) if e["event"] == "end"}
    assert ended == {f"w{n}" for n in range(20)}
    assert [r.get(timeout=10) for r in results] == [f"w{n}" for n in range(20)]


def test_the_eventlet_pool_is_refused_naming_gevent(tasks_dir: Path) -> None:
    write_tasks(tasks_dir, SOURCE)
    done = subprocess.run(
        [sys.executable, "-m", "celeriac", "-A", "tasks", "worker", "-P", "eventlet"],
        cwd=tasks_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EX_CONFIG, done.stderr
    assert done.stderr.strip() == f"Error: {EVENTLET_REFUSED}"
    assert "deprecated" in EVENTLET_REFUSED
    assert "-P gevent" in EVENTLET_REFUSED
