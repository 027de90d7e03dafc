"""`celeriac -A tasks status` lists the live workers and their consumers from the presence
records, and exits non-zero when none is alive (a liveness probe).

Checks docs/worker.md, "Presence": one line per worker (pool, concurrency, messages
held) and one per consuming process (pid, host, last heartbeat, held, running); exit
code 69 when no consumer is alive, and the same once the only worker stopped.
"""

from __future__ import annotations

import json
import signal
import socket
from typing import TYPE_CHECKING

import pytest

from celeriac.cli import EX_UNAVAILABLE
from tests.helpers import amqp_url, wait_for
from tests.integration.conftest import write_tasks
from tests.integration.test_cli_dlq import celeriac
from tests.integration.worker_tasks import SOURCE

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import RunWorker

pytestmark = pytest.mark.integration

PRESENCE_BROKERS = pytest.mark.parametrize("broker_env", ["sqlite", "redis"], indirect=True)


@PRESENCE_BROKERS
def test_status_lists_each_live_worker_and_its_consumers(
    broker_env: str, tasks_dir: Path, run_worker: RunWorker
) -> None:
    write_tasks(tasks_dir, SOURCE)
    prefork = run_worker("-P", "prefork", "-c", "2", "-n", "alpha@%h")
    threads = run_worker("-P", "threads", "-c", "8", "-n", "beta@%h")
    wait_for(lambda: len(prefork.children()) == 2, timeout=20, what="two children")

    def listed() -> dict[str, list[dict[str, object]]]:
        done = celeriac(tasks_dir, "status", "--json")
        if done.returncode != 0:
            return {}
        workers: dict[str, list[dict[str, object]]] = json.loads(done.stdout)["workers"]
        return workers if len(workers.get(f"alpha@{socket.gethostname()}", [])) == 2 else {}

    workers = wait_for(listed, timeout=30, what="both workers' consumers in the status")
    host = socket.gethostname()
    alpha, beta = workers[f"alpha@{host}"], workers[f"beta@{host}"]
    assert {c["pid"] for c in alpha} == set(prefork.children())
    assert all(c["pool"] == "prefork" and c["concurrency"] == 1 for c in alpha)
    [only] = beta
    assert (only["pid"], only["pool"], only["concurrency"]) == (threads.pid, "threads", 8)
    assert all(c["host"] == host for c in [*alpha, *beta])
    assert all(0 <= float(str(c["seconds_since_heartbeat"])) < 5 for c in [*alpha, *beta])

    done = celeriac(tasks_dir, "status")
    assert done.returncode == 0, done.stderr
    assert f"alpha@{host}: 2 consumer(s), pool prefork, concurrency 2" in done.stdout
    assert f"beta@{host}: 1 consumer(s), pool threads, concurrency 8" in done.stdout
    assert f"  pid {threads.pid} on {host}: threads, concurrency 8, last heartbeat" in done.stdout


@PRESENCE_BROKERS
def test_status_exits_non_zero_when_no_worker_is_alive(
    broker_env: str, tasks_dir: Path, run_worker: RunWorker
) -> None:
    write_tasks(tasks_dir, SOURCE)
    done = celeriac(tasks_dir, "status")
    assert done.returncode == EX_UNAVAILABLE
    assert "no live celeriac worker" in done.stderr
    worker = run_worker("-P", "solo")
    wait_for(lambda: celeriac(tasks_dir, "status").returncode == 0, timeout=30, what="the worker")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    done = celeriac(tasks_dir, "status")
    assert done.returncode == EX_UNAVAILABLE, done.stdout


@pytest.mark.parametrize("broker_env", ["amqp"], indirect=True)
def test_status_on_rabbitmq_asks_the_workers_over_the_broadcast_channel(
    broker_env: str, tasks_dir: Path, run_worker: RunWorker
) -> None:
    # RabbitMQ keeps no presence records: the workers answer `stats` instead.
    write_tasks(tasks_dir, SOURCE)
    name = f"{broker_env}-status@{socket.gethostname()}"

    def listed() -> dict[str, dict[str, object]]:
        done = celeriac(tasks_dir, "status", "--json", "--timeout", "2")
        if done.returncode != 0:
            return {}
        workers: dict[str, dict[str, object]] = json.loads(done.stdout)["workers"]
        return workers if name in workers else {}

    worker = run_worker("-P", "threads", "-c", "3", "-n", name)
    workers = wait_for(listed, timeout=30, what="the worker's reply")
    assert workers[name] == {"pid": worker.pid, "pool": "celeriac:threads", "concurrency": 3}
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0


def test_status_on_rabbitmq_with_no_worker_exits_non_zero(
    tasks_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tasks(tasks_dir, SOURCE)
    monkeypatch.setenv("TEST_BROKER_URL", amqp_url())
    monkeypatch.setenv("TEST_QUEUE", "status-nobody")
    done = celeriac(tasks_dir, "status", "--timeout", "0.5")
    assert done.returncode == EX_UNAVAILABLE
    assert "no worker answered" in done.stderr
