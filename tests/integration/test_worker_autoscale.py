"""Prefork pool size at run time, with real workers (Redis; the burst on SQLite and RabbitMQ
too in the full profile).

- `--autoscale=max,min`: a burst grows the pool to max, idleness shrinks it back to min,
  and the ledger the tasks write shows every message ran exactly once.
- Shrinking busy children: each finishes its task and gives back what it prefetched.
- `pool_grow`/`pool_shrink` from celeriac's control and from stock `celery control`
  change the number of children; `autoscale` changes max and min (`stats` shows them).

Children are counted from /proc (live, non-zombie processes whose parent is the worker).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import ONE_BROKER, full, wait_for
from tests.integration.conftest import import_tasks, write_tasks
from tests.integration.interop_redis import import_module
from tests.integration.worker_tasks import SOURCE, events

if TYPE_CHECKING:
    import subprocess

    from tests.integration.conftest import RunWorker
    from tests.integration.mixed_fleet import Fleet

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.slow]

# Celery's reply to pool_grow while autoscaling.
GROW_WITH_AUTOSCALE = "pool_grow is not supported with autoscale. Adjust autoscale range instead."
# Seconds without new work before scaling down (Celery's variable; 30 s by default).
KEEPALIVE = "1.5"


def children_of(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is `pid`, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


@pytest.fixture
def tasks(tasks_dir: Path, broker_env: str) -> Any:
    write_tasks(tasks_dir, SOURCE)
    module = import_tasks(tasks_dir)
    yield module
    module.app.close()


# The autoscaler is the same on every broker and prefetch: Redis with a prefetch of 4
# (children holding messages) by default, the others in the full profile.
@pytest.mark.parametrize("broker_env", ONE_BROKER, indirect=True)
@pytest.mark.parametrize("prefetch", [full("1"), "4"])
def test_a_burst_grows_the_pool_to_max_and_idleness_shrinks_it_back(
    tasks: Any, tasks_dir: Path, run_worker: RunWorker, prefetch: str
) -> None:
    worker = run_worker(
        "--autoscale=4,1",
        "--prefetch-multiplier",
        prefetch,
        env={"AUTOSCALE_KEEPALIVE": KEEPALIVE},
    )
    wait_for(lambda: len(children_of(worker.pid)) == 1, timeout=10, what="one child at start")
    keys = [f"burst-{n}" for n in range(24)]
    results = [tasks.sleeper.delay(0.4, key) for key in keys]
    # Measured: four children about 2 s after the burst is sent (one second per step).
    wait_for(lambda: len(children_of(worker.pid)) == 4, timeout=15, what="the pool at max")
    assert [r.get(timeout=60) for r in results] == keys
    # Back to one child after the keepalive (measured: about 3 s after the last task).
    wait_for(lambda: len(children_of(worker.pid)) == 1, timeout=20, what="the pool back at min")
    log = [e for e in events(tasks_dir) if e["key"] in keys]
    starts = Counter(e["key"] for e in log if e["event"] == "start")
    ends = Counter(e["key"] for e in log if e["event"] == "end")
    assert starts == ends == Counter(keys), "a message was lost or ran twice"
    assert len({e["pid"] for e in log}) >= 3, "the burst ran on one or two children"
    output = worker.output()
    assert "pool:         prefork (autoscale: min 1, max 4)" in output
    assert "Scaling up" in output
    assert "Retiring child" in output


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_shrinking_busy_children_neither_loses_nor_repeats_a_message(
    tasks: Any, tasks_dir: Path, run_worker: RunWorker
) -> None:
    # Its own node name: the command goes to this worker only.
    node = f"{os.environ['TEST_QUEUE']}@test"
    worker = run_worker("-c", "4", "--prefetch-multiplier", "4", "-n", node)
    wait_for(lambda: len(children_of(worker.pid)) == 4, timeout=10, what="four children")
    # 24 tasks of 0.5 s: 16 held at once (4 children x 4), so when three children are
    # retired after the first starts, each still holds prefetched ones (with 0.3 s tasks
    # a loaded machine could drain them first).
    keys = [f"busy-{n}" for n in range(24)]
    results = [tasks.sleeper.delay(0.5, key) for key in keys]
    wait_for(
        lambda: sum(e["event"] == "start" for e in events(tasks_dir)) >= 4,
        timeout=15,
        what="every child busy",
    )
    # Every child runs a task and holds prefetched ones: three are retired mid-work.
    assert tasks.app.control.pool_shrink(3, destination=[node], reply=True) == [
        {node: {"ok": "pool will shrink"}}
    ]
    wait_for(lambda: len(children_of(worker.pid)) == 1, timeout=15, what="one child left")
    assert [r.get(timeout=60) for r in results] == keys
    log = [e for e in events(tasks_dir) if e["key"] in keys]
    starts = Counter(e["key"] for e in log if e["event"] == "start")
    ends = Counter(e["key"] for e in log if e["event"] == "end")
    assert starts == ends == Counter(keys), "a message was lost or ran twice"
    # The retired children gave back what they had prefetched.
    assert "prefetched message(s) to the queue" in worker.output()


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[0])


@pytest.mark.parametrize("fleet", ["redis", "amqp"], indirect=True)
def test_pool_grow_and_shrink_from_celeriac_and_stock_celery_change_the_children(
    fleet: Fleet, run_worker: RunWorker
) -> None:
    node = f"{fleet.queue}@test"
    worker = run_worker("-c", "2", "-n", node)
    wait_for(lambda: len(children_of(worker.pid)) == 2, timeout=10, what="two children")
    cproj = import_tasks_module(fleet)
    try:
        control = cproj.app.control
        assert control.pool_grow(2, destination=[node], reply=True) == [
            {node: {"ok": "pool will grow"}}
        ]
        wait_for(lambda: len(children_of(worker.pid)) == 4, timeout=10, what="four children")
        assert control.pool_shrink(3, destination=[node], reply=True) == [
            {node: {"ok": "pool will shrink"}}
        ]
        wait_for(lambda: len(children_of(worker.pid)) == 1, timeout=10, what="one child")
        # The one left still works.
        assert cproj.add.delay(2, 3).get(timeout=20) == 5
    finally:
        cproj.app.close()
    assert _json(fleet.run("celery", "control", "pool_grow", "2", "-d", node, "-j")) == [
        {node: {"ok": "pool will grow"}}
    ]
    wait_for(lambda: len(children_of(worker.pid)) == 3, timeout=10, what="three children")
    assert _json(fleet.run("celery", "control", "pool_shrink", "1", "-d", node, "-j")) == [
        {node: {"ok": "pool will shrink"}}
    ]
    wait_for(lambda: len(children_of(worker.pid)) == 2, timeout=10, what="two children")
    stats = _json(fleet.run("celery", "inspect", "stats", "-d", node, "-j"))[node]
    assert stats["pool"]["max-concurrency"] == 2
    assert sorted(stats["pool"]["processes"]) == sorted(children_of(worker.pid))
    assert "autoscaler" not in stats
    # A fixed pool has no autoscaler: Celery's error.
    assert _json(fleet.run("celery", "control", "autoscale", "4", "1", "-d", node, "-j")) == [
        {node: {"error": "ValueError('Autoscale not enabled')"}}
    ]


@pytest.mark.parametrize("fleet", ["redis"], indirect=True)
def test_the_autoscale_command_changes_max_and_min(fleet: Fleet, run_worker: RunWorker) -> None:
    node = f"{fleet.queue}@test"
    worker = run_worker("--autoscale=3,1", "-n", node, env={"AUTOSCALE_KEEPALIVE": KEEPALIVE})
    wait_for(lambda: len(children_of(worker.pid)) == 1, timeout=10, what="one child")
    # Raising min grows the pool at once, whatever the load.
    assert _json(fleet.run("celery", "control", "autoscale", "6", "3", "-d", node, "-j")) == [
        {node: {"ok": "autoscale now max=6 min=3"}}
    ]
    wait_for(lambda: len(children_of(worker.pid)) == 3, timeout=10, what="three children")
    stats = _json(fleet.run("celery", "inspect", "stats", "-d", node, "-j"))[node]
    assert stats["autoscaler"]["max"] == 6
    assert stats["autoscaler"]["min"] == 3
    assert stats["autoscaler"]["current"] == 3
    assert len(stats["pool"]["processes"]) == 3
    # Resizing by hand is refused while autoscaling, in Celery's words.
    assert _json(fleet.run("celery", "control", "pool_grow", "1", "-d", node, "-j")) == [
        {node: {"error": GROW_WITH_AUTOSCALE}}
    ]
    cproj = import_tasks_module(fleet)
    try:
        assert cproj.app.control.autoscale(2, 1, destination=[node], reply=True) == [
            {node: {"ok": "autoscale now max=2 min=1"}}
        ]
    finally:
        cproj.app.close()
    # Lowering max retires the idle children beyond it; idleness then brings it to min.
    wait_for(lambda: len(children_of(worker.pid)) == 1, timeout=20, what="one child")


def import_tasks_module(fleet: Fleet) -> Any:
    return import_module(fleet.directory, "cproj")
