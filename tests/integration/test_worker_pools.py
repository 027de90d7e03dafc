"""The threads, solo and asyncio pools, and the worker command's start-up failures."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from celeriac.cli import EX_SOFTWARE, EX_USAGE
from celeriac.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from tests.helpers import wait_for
from tests.integration.conftest import RunWorker, import_tasks, write_tasks
from tests.integration.worker_tasks import SOURCE, events

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration


@pytest.fixture
def tasks(tasks_dir: Path) -> Any:
    write_tasks(tasks_dir, SOURCE)
    module = import_tasks(tasks_dir)
    yield module
    module.app.close()


def test_threads_pool_runs_tasks_on_threads_of_one_process(
    tasks: Any, run_worker: RunWorker
) -> None:
    worker = run_worker("-P", "threads", "-c", "4")
    results = [tasks.pid_and_thread.delay() for _ in range(20)]
    placements = [r.get(timeout=10) for r in results]
    assert {pid for pid, _ in placements} == {worker.pid}
    assert len({thread for _, thread in placements}) > 1


def test_threads_pool_runs_tasks_concurrently(tasks: Any, run_worker: RunWorker) -> None:
    run_worker("-P", "threads", "-c", "8")
    sent = time.monotonic()
    results = [tasks.sleeper.delay(1.0, f"t{n}") for n in range(8)]
    assert [r.get(timeout=20) for r in results] == [f"t{n}" for n in range(8)]
    # Eight one-second tasks on eight threads take about one second, not eight.
    assert time.monotonic() - sent < 6


def test_solo_pool_runs_in_the_worker_process(tasks: Any, run_worker: RunWorker) -> None:
    worker = run_worker("-P", "solo")
    assert tasks.where.delay().get(timeout=10)["pid"] == worker.pid
    assert worker.children() == []


def test_solo_pool_enforces_the_soft_time_limit(tasks: Any, run_worker: RunWorker) -> None:
    run_worker("-P", "solo")
    assert tasks.soft.delay().get(timeout=10) == "soft limit caught"


def test_solo_pool_raises_the_hard_time_limit_in_the_task(
    tasks: Any, tasks_dir: Path, run_worker: RunWorker
) -> None:
    worker = run_worker("-P", "solo")
    result = tasks.hard.delay()  # time_limit=1, sleeps 10 s
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=10)
    # Raised in the task: the body stopped there, and the worker process runs the next one.
    assert [e for e in events(tasks_dir) if e.get("key") == "hard" and e["event"] == "end"] == []
    assert tasks.where.delay().get(timeout=10)["pid"] == worker.pid


# Tasks that run past their limits while going back to Python (or the event loop) often,
# which is when the threads and asyncio pools can interrupt them (docs/worker.md).
LIMITS = """

@app.task(soft_time_limit=0.5)
def spin_soft():
    try:
        for _ in range(2000):
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        return "soft limit caught"
    return "not interrupted"


@app.task(time_limit=1)
def spin_hard():
    record("start", key="spin_hard")
    for _ in range(2000):
        time.sleep(0.01)
    record("end", key="spin_hard")


@app.task(soft_time_limit=0.5)
async def nap_soft():
    try:
        await asyncio.sleep(20)
    except asyncio.CancelledError:
        record("cancelled", key="nap_soft")
        raise
    record("end", key="nap_soft")


@app.task(time_limit=1)
async def nap_hard():
    try:
        await asyncio.sleep(20)
    except asyncio.CancelledError:
        record("cancelled", key="nap_hard")
        raise
    record("end", key="nap_hard")
"""

THREADS_LIMITS_WARNING = (
    "on the threads pool, time limits interrupt a task only when it runs Python code "
    "(not while blocked in C code)"
)


@pytest.fixture
def limit_tasks(tasks_dir: Path) -> Any:
    write_tasks(tasks_dir, SOURCE + LIMITS)
    module = import_tasks(tasks_dir)
    yield module
    module.app.close()


def keys_of(tasks_dir: Path, event: str) -> list[object]:
    return [e["key"] for e in events(tasks_dir) if e["event"] == event]


def test_threads_pool_raises_the_soft_time_limit_in_the_task(
    limit_tasks: Any, run_worker: RunWorker
) -> None:
    run_worker("-P", "threads", "-c", "2")
    assert limit_tasks.spin_soft.delay().get(timeout=20) == "soft limit caught"


def test_threads_pool_raises_the_hard_time_limit_in_the_task(
    limit_tasks: Any, tasks_dir: Path, run_worker: RunWorker
) -> None:
    worker = run_worker("-P", "threads", "-c", "2")
    with pytest.raises(TimeLimitExceeded):
        limit_tasks.spin_hard.delay().get(timeout=20)
    assert keys_of(tasks_dir, "start") == ["spin_hard"]
    assert keys_of(tasks_dir, "end") == []
    # Raised in the task's thread: the worker process itself carries on.
    assert worker.process.poll() is None
    assert limit_tasks.where.delay().get(timeout=10)["pid"] == worker.pid


def test_asyncio_pool_cancels_at_the_soft_time_limit(
    limit_tasks: Any, tasks_dir: Path, run_worker: RunWorker
) -> None:
    run_worker("-P", "asyncio", "-c", "10")
    result = limit_tasks.nap_soft.delay()
    with pytest.raises(SoftTimeLimitExceeded):
        result.get(timeout=20)
    assert result.state == "FAILURE"
    assert keys_of(tasks_dir, "cancelled") == ["nap_soft"]
    assert keys_of(tasks_dir, "end") == []


def test_asyncio_pool_cancels_at_the_hard_time_limit(
    limit_tasks: Any, tasks_dir: Path, run_worker: RunWorker
) -> None:
    run_worker("-P", "asyncio", "-c", "10")
    result = limit_tasks.nap_hard.delay()
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=20)
    assert result.state == "FAILURE"
    assert keys_of(tasks_dir, "cancelled") == ["nap_hard"]
    assert keys_of(tasks_dir, "end") == []


@pytest.mark.parametrize("flag", ["--time-limit", "--soft-time-limit"])
def test_threads_pool_warns_at_start_when_time_limits_are_set(
    tasks: Any, run_worker: RunWorker, flag: str
) -> None:
    worker = run_worker("-P", "threads", "-c", "2", flag, "30")
    assert THREADS_LIMITS_WARNING in worker.output()


def test_threads_pool_does_not_warn_without_time_limits(tasks: Any, run_worker: RunWorker) -> None:
    worker = run_worker("-P", "threads", "-c", "2")
    assert THREADS_LIMITS_WARNING not in worker.output()


def test_asyncio_pool_runs_many_coroutines_at_once(tasks: Any, run_worker: RunWorker) -> None:
    run_worker("-P", "asyncio", "-c", "500")
    sent = time.monotonic()
    results = [tasks.nap.delay(1.0, n) for n in range(500)]
    assert [r.get(timeout=60) for r in results] == list(range(500))
    # 500 one-second naps at concurrency 500: seconds, not minutes.
    assert time.monotonic() - sent < 30


def test_asyncio_pool_runs_plain_tasks_in_a_thread(tasks: Any, run_worker: RunWorker) -> None:
    worker = run_worker("-P", "asyncio", "-c", "10")
    assert tasks.where.delay().get(timeout=10)["pid"] == worker.pid


@pytest.mark.parametrize("pool", ["threads", "solo", "asyncio"])
def test_in_process_pools_shut_down_warm_on_sigterm(
    tasks: Any, tasks_dir: Path, run_worker: RunWorker, pool: str
) -> None:
    worker = run_worker("-P", pool, "-c", "1")
    result = tasks.sleeper.delay(1.0, f"warm-{pool}")
    wait_for(lambda: [e for e in events(tasks_dir) if e["event"] == "start"], timeout=10)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    assert result.get(timeout=5) == f"warm-{pool}"


def _celeriac(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celeriac", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_missing_module_gives_one_line_and_a_usage_exit(tasks_dir: Path) -> None:
    done = _celeriac(tasks_dir, "-A", "no_such_module", "worker")
    assert done.returncode == EX_USAGE
    assert done.stderr.strip().count("\n") == 0
    assert "cannot import module 'no_such_module'" in done.stderr


def test_a_module_that_fails_to_import_gives_one_line(tasks_dir: Path) -> None:
    (tasks_dir / "broken.py").write_text("import os\nraise RuntimeError('half-written')\n")
    done = _celeriac(tasks_dir, "-A", "broken", "worker")
    assert done.returncode == EX_SOFTWARE
    assert done.stderr.strip().count("\n") == 0
    assert "RuntimeError: half-written" in done.stderr
    assert "broken.py:2" in done.stderr


def test_a_module_without_an_app_gives_one_line(tasks_dir: Path) -> None:
    (tasks_dir / "plain.py").write_text("x = 1\n")
    done = _celeriac(tasks_dir, "-A", "plain", "worker")
    assert done.returncode == EX_USAGE
    assert "has no Celeriac app" in done.stderr
    assert done.stderr.strip().count("\n") == 0


def test_the_banner_lists_the_app_pool_queues_and_tasks(tasks: Any, run_worker: RunWorker) -> None:
    worker = run_worker("-c", "2", "-Q", "celery,other")
    banner = worker.output()
    assert "app:          tasks" in banner
    assert "pool:         prefork (concurrency 2)" in banner
    assert "queues:       celery, other" in banner
    assert ". tasks.sleeper" in banner
    assert "sqlite:///" in banner


def test_log_lines_name_the_task_and_its_id(tasks: Any, run_worker: RunWorker) -> None:
    worker = run_worker("-c", "1")
    result = tasks.where.delay()
    result.get(timeout=10)
    wait_for(lambda: f"tasks.where[{result.id}] succeeded" in worker.output(), timeout=5)


def test_worker_process_init_runs_in_every_prefork_child(
    tasks_dir: Path, run_worker: RunWorker
) -> None:
    write_tasks(
        tasks_dir,
        SOURCE
        + """
from celeriac.signals import worker_process_init


@worker_process_init.connect
def mark_child(**kwargs):
    (HERE / f"init-{os.getpid()}").touch()
""",
    )
    worker = run_worker("-c", "2")
    wait_for(lambda: len(worker.children()) == 2, timeout=10)
    children = worker.children()
    wait_for(
        lambda: sorted(int(p.name[5:]) for p in tasks_dir.glob("init-*")) == sorted(children),
        timeout=10,
        what="an init mark per child",
    )
