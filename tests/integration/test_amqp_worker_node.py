"""Real celeriac workers on a PRIVATE RabbitMQ node: what RabbitMQ itself reports about
them (`rabbitmqctl`), and a `stop_app`/`start_app` in the middle of a run.

- Prefetch: each consuming process has its own connection and channel, whose
  `basic.qos` window is concurrency x prefetch multiplier of that process (1 x the
  multiplier for a prefork child, c x the multiplier for the threads pool), and
  RabbitMQ hands each no more than that.
- ETA: a countdown task waits in the delay ladder on RabbitMQ, never unacked in the
  worker, and runs on time.
- Outage: worker and producer reconnect and go on; every confirmed publish gets its
  result.

The node (its own name, ports and data dir; see `test_amqp_private_node.py`) starts
once for the module and is stopped by pid at the end.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

import psutil
import pytest

from celeriac.exceptions import BrokerError
from tests.helpers import wait_for
from tests.integration.test_amqp_worker import MakeProject, project_factory
from tests.private_servers import CTL, Node

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.integration.conftest import RunWorker, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.slow]


@pytest.fixture
def project(tasks_dir: Path, node: Node) -> Iterator[MakeProject]:
    yield from project_factory(tasks_dir, node.url)


def ctl_rows(node: Node, *args: str) -> list[list[str]]:
    """A `rabbitmqctl list_*` table of the private node, as rows of strings."""
    done = subprocess.run(
        [CTL, "-n", node.name, *args, "--quiet", "--no-table-headers"],
        env=node.env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    return [line.split("\t") for line in done.stdout.splitlines() if line.strip()]


def consuming_channels(node: Node, pids: list[int]) -> dict[int, list[dict[str, int]]]:
    """For each process in `pids`: its channels that consume tasks, as RabbitMQ sees
    them (prefetch window, unacked count). Connections are matched to processes by
    their local TCP port. The remote control channel (no prefetch window, no acks) is
    left out."""
    ports: dict[int, int] = {}
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == node.port:
                ports[conn.laddr.port] = pid
    owner = {
        connection: ports[int(port)]
        for connection, port in ctl_rows(node, "list_connections", "pid", "peer_port")
        if int(port) in ports
    }
    found: dict[int, list[dict[str, int]]] = {pid: [] for pid in pids}
    for connection, consumers, prefetch, global_prefetch, unacked in ctl_rows(
        node,
        "list_channels",
        "connection",
        "consumer_count",
        "prefetch_count",
        "global_prefetch_count",
        "messages_unacknowledged",
    ):
        if connection in owner and int(consumers) > 0 and (int(prefetch) or int(global_prefetch)):
            found[owner[connection]].append(
                {
                    "prefetch": int(prefetch),
                    "global_prefetch": int(global_prefetch),
                    "unacked": int(unacked),
                }
            )
    return found


def queue_counts(node: Node, queue: str) -> dict[str, tuple[int, int]]:
    """`queue` and its delay-ladder queues on the node: (ready, unacked). Other modules'
    queues on the shared node are left out."""
    return {
        name: (int(ready), int(unacked))
        for name, ready, unacked in ctl_rows(
            node, "list_queues", "name", "messages_ready", "messages_unacknowledged"
        )
        if name == queue or name.startswith(f"celeriac.delay.{queue}.")
    }


def consumers_ready(worker: WorkerProcess, node: Node, count: int) -> bool:
    channels = consuming_channels(node, worker.children() or [worker.pid])
    return sum(len(c) for c in channels.values()) == count


def test_each_prefork_child_consumes_with_a_window_of_the_multiplier(
    project: MakeProject, tasks_dir: Path, run_worker: RunWorker, node: Node
) -> None:
    made = project()
    tasks = made.module
    worker = run_worker("-c", "2", "--prefetch-multiplier", "3")
    wait_for(lambda: len(worker.children()) == 2, timeout=10)
    wait_for(lambda: consumers_ready(worker, node, 2), timeout=10, what="two consumers")
    results = [tasks.gated.delay(f"s-{n}") for n in range(10)]
    wait_for(lambda: len(events_started(tasks_dir)) == 2, timeout=10, what="both children busy")
    channels = consuming_channels(node, worker.children())
    # One consuming channel per child, window 1 x 3 each (basic.qos global=True, the
    # channel-wide limit Celery uses), full: 1 running + 2 prefetched.
    assert sorted(len(c) for c in channels.values()) == [1, 1]
    for [channel] in channels.values():
        assert channel == {"prefetch": 0, "global_prefetch": 3, "unacked": 3}
    assert queue_counts(node, made.queue)[made.queue] == (4, 6)
    (tasks_dir / "open").touch()
    assert sorted(r.get(timeout=30) for r in results) == sorted(f"s-{n}" for n in range(10))
    assert queue_counts(node, made.queue)[made.queue] == (0, 0)


def test_the_threads_pool_consumes_with_a_window_of_concurrency_times_multiplier(
    project: MakeProject, tasks_dir: Path, run_worker: RunWorker, node: Node
) -> None:
    made = project()
    tasks = made.module
    worker = run_worker("-P", "threads", "-c", "3", "--prefetch-multiplier", "2")
    wait_for(lambda: consumers_ready(worker, node, 1), timeout=10, what="the consumer")
    results = [tasks.gated.delay(f"t-{n}") for n in range(10)]
    wait_for(lambda: len(events_started(tasks_dir)) == 3, timeout=10, what="three threads busy")
    [channel] = consuming_channels(node, [worker.pid])[worker.pid]
    assert channel == {"prefetch": 0, "global_prefetch": 6, "unacked": 6}
    assert queue_counts(node, made.queue)[made.queue] == (4, 6)
    (tasks_dir / "open").touch()
    assert len({r.get(timeout=30) for r in results}) == 10


def events_started(directory: Path) -> list[dict[str, Any]]:
    from tests.integration.worker_tasks import events

    return [e for e in events(directory) if e["event"] == "start"]


def test_a_countdown_task_waits_on_rabbitmq_not_unacked_in_the_worker(
    project: MakeProject, run_worker: RunWorker, node: Node
) -> None:
    made = project()
    tasks = made.module
    worker = run_worker("-c", "1")
    wait_for(lambda: consumers_ready(worker, node, 1), timeout=10, what="the consumer")
    # 15 s: a check is three rabbitmqctl calls, 2.4 s together under a loaded `make
    # test`, and the checks must span more than 3 s before the last 2 s of the wait.
    sending = time.time()  # the ETA is taken during the call
    result = tasks.where.apply_async(("later",), countdown=15)
    sent = time.time()
    eta = sent + 15
    # When each check began: what counts is the time the checks span, not their number.
    checked: list[float] = []
    while not result.ready():
        began = time.time()
        if began < eta - 2:
            counts = queue_counts(node, made.queue)
            [channel] = consuming_channels(node, worker.children())[worker.children()[0]]
            if time.time() < eta - 0.5:  # all of it read while the countdown ran
                # Nothing unacked anywhere: the worker holds nothing; the message sits
                # in one of the queue's delay-ladder queues.
                assert sum(unacked for _, unacked in counts.values()) == 0
                waiting = {n: r for n, (r, _) in counts.items() if r and n != made.queue}
                assert len(waiting) == 1
                assert next(iter(waiting)).startswith(f"celeriac.delay.{made.queue}.")
                assert counts[made.queue] == (0, 0)
                assert channel["unacked"] == 0
                checked.append(began - sent)
        assert time.time() < eta + 10, "the countdown task did not run"
        time.sleep(max(0.0, 1 - (time.time() - began)))
    # Off the worker from the start of the countdown until well after a prefetching
    # worker would have taken the message.
    assert len(checked) >= 2, checked
    assert checked[-1] > 3, checked
    ran_at = result.get(timeout=1)["time"]
    assert sending + 15 <= ran_at < eta + 1.5


def test_worker_and_producer_ride_out_a_stop_app_and_lose_nothing_confirmed(
    project: MakeProject, run_worker: RunWorker, node: Node
) -> None:
    tasks = project().module
    worker = run_worker("-c", "2")
    confirmed: dict[str, int] = {}
    failed: list[BaseException] = []
    total = 400

    def produce() -> None:
        for n in range(total):
            try:
                result = tasks.add.delay(n, n)
            except BrokerError as exc:  # not confirmed: it may or may not run
                failed.append(exc)
                continue
            confirmed[result.id] = 2 * n
            time.sleep(0.01)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_for(lambda: len(confirmed) >= 100, timeout=30, what="first confirms")
        node.stop_app()
        stopped_at = len(confirmed)
        time.sleep(1.0)
        node.start_app()
    finally:
        producer.join(120)
    assert failed == []
    assert len(confirmed) == total
    assert stopped_at < total - 50  # the producer really published through the outage
    backend = tasks.app.backend
    got = backend.wait_many(list(confirmed), timeout=60)
    assert {task_id: meta.result for task_id, meta in got.items()} == confirmed
    output = worker.output()
    assert "reconnected to RabbitMQ" in output
