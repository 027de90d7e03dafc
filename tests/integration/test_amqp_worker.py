"""Real celeriac workers on RabbitMQ (the shared node): deaths and the redelivery cap,
acks after the result is stored, priorities, routes, and `rpc://` results end to end.

Each test writes its own `tasks.py` (its own queues, Redis key prefix or rpc reply
queue), starts `celeriac worker` processes on it, and removes what it created on
RabbitMQ and Redis afterwards. Tests that must look inside RabbitMQ (`rabbitmqctl`) or
stop it run on a private node: `test_amqp_worker_node.py`.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from celeriac import chain, states
from celeriac.exceptions import WorkerLostError
from tests.helpers import require_rabbitmq, require_redis, unique, wait_for
from tests.integration.conftest import import_tasks, write_tasks
from tests.integration.worker_tasks import events

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.integration.conftest import RunWorker

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.slow]

# The project every test here runs: formatted with the test's URLs, queues and settings.
SOURCE = """
import json
import os
import signal
import time
from pathlib import Path

from celeriac import Celeriac

HERE = Path(__file__).resolve().parent
app = Celeriac(
    "tasks",
    broker={broker!r},
    backend={backend!r},
    task_default_queue={queue!r},
    task_routes={routes!r},
    task_queue_max_priority={max_priority!r},
    broker_transport_options={{
        "dead_letter_queue": {dead_letter_queue!r},
        "publish_retry_timeout": 30,
        "retry_interval_max": 1.0,
    }},
    result_backend_transport_options={backend_options!r},
)


def record(event, **fields):
    line = json.dumps({{"event": event, "pid": os.getpid(), "time": time.time(), **fields}})
    with open(HERE / "events.log", "a") as log:
        log.write(line + "\\n")


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def fail(text):
    raise ValueError(text)


@app.task
def sleeper(seconds, key):
    record("start", key=key)
    time.sleep(seconds)
    record("end", key=key)
    return key


@app.task
def gated(key):
    # Runs until the test creates the file `open` beside this module.
    record("start", key=key)
    deadline = time.time() + 30
    while not (HERE / "open").exists() and time.time() < deadline:
        time.sleep(0.02)
    return key


@app.task(bind=True)
def where(self, key=None):
    info = self.request.delivery_info
    record("start", key=key)
    return {{
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "redelivered": info.get("redelivered"),
        "exchange": info.get("exchange"),
        "routing_key": info.get("routing_key"),
        "queue": self.request.queue,
        "priority": self.request.priority,
        "time": time.time(),
    }}


@app.task(time_limit=1)
def hard():
    record("start", key="hard")
    time.sleep(10)


@app.task
def always_die():
    record("start", key="always_die")
    os.kill(os.getpid(), signal.SIGKILL)
"""


@dataclass
class Project:
    """One test's `tasks.py`: the module imported here, and what to clean up."""

    module: Any
    queue: str
    dead_letter_queue: str
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)

    @property
    def app(self) -> Any:
        return self.module.app


class MakeProject(Protocol):
    def __call__(
        self,
        *,
        backend: str = "redis",
        routes: dict[str, Any] | None = None,
        max_priority: int | None = None,
        extra_queues: tuple[str, ...] = (),
        exchanges: tuple[str, ...] = (),
    ) -> Project: ...


def delete_amqp(url: str, queues: list[str], exchanges: list[str]) -> None:
    """Remove queues (with their exchanges and delay ladders) and exchanges."""
    import amqp

    from celeriac.brokers.amqp.broker import AMQPBroker

    broker = AMQPBroker(url)
    try:
        for queue in queues:
            broker.delete_queue(queue)
    finally:
        broker.close()
    if exchanges:
        host = url.split("@")[-1].split("/")[0]
        connection = amqp.Connection(host)
        connection.connect()
        try:
            channel = connection.channel()
            for exchange in exchanges:
                channel.exchange_delete(exchange)
        finally:
            connection.close()


def delete_redis_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def project_factory(tasks_dir: Path, amqp_url: str) -> Iterator[MakeProject]:
    """Write and import a project on `amqp_url`; clean RabbitMQ and Redis afterwards."""
    made: list[Project] = []
    prefixes: list[str] = []

    def make(
        *,
        backend: str = "redis",
        routes: dict[str, Any] | None = None,
        max_priority: int | None = None,
        extra_queues: tuple[str, ...] = (),
        exchanges: tuple[str, ...] = (),
    ) -> Project:
        queue = unique("aw")
        if backend == "redis":
            redis_url: str | None = require_redis()
            prefix = f"{queue}:"
            prefixes.append(prefix)
            backend_options = {"global_keyprefix": prefix}
        else:
            # None: the app's default for an AMQP broker, rpc://.
            redis_url, backend_options = None, {}
        write_tasks(
            tasks_dir,
            SOURCE.format(
                broker=amqp_url,
                backend=redis_url,
                queue=queue,
                routes=routes,
                max_priority=max_priority,
                dead_letter_queue=f"{queue}.dead",
                backend_options=backend_options,
            ),
        )
        project = Project(
            import_tasks(tasks_dir),
            queue=queue,
            dead_letter_queue=f"{queue}.dead",
            queues=[queue, f"{queue}.dead", *extra_queues],
            exchanges=list(exchanges),
        )
        made.append(project)
        return project

    yield make
    for project in made:
        project.app.close()
        delete_amqp(amqp_url, project.queues, project.exchanges)
    for prefix in prefixes:
        delete_redis_keys(require_redis(), prefix)


@pytest.fixture
def project(tasks_dir: Path) -> Iterator[MakeProject]:
    yield from project_factory(tasks_dir, require_rabbitmq())


def started(directory: Path, key: str) -> list[dict[str, Any]]:
    return [e for e in events(directory) if e["event"] == "start" and e["key"] == key]


# -- deaths, redelivery and the cap ---------------------------------------------------


def test_a_dead_childs_deliveries_are_redelivered_and_run_elsewhere(
    project: MakeProject, tasks_dir: Path, run_worker: RunWorker
) -> None:
    tasks = project().module
    worker = run_worker("-c", "2", "--prefetch-multiplier", "3")
    wait_for(lambda: len(worker.children()) == 2, timeout=10)
    victim = tasks.sleeper.delay(2, "victim")
    [first] = wait_for(lambda: started(tasks_dir, "victim"), timeout=10)
    # What the victim's child prefetched behind it dies with it, unacked.
    others = [tasks.where.delay(f"after-{n}") for n in range(8)]
    os.kill(first["pid"], signal.SIGKILL)
    assert victim.get(timeout=15) == "victim"
    [again] = started(tasks_dir, "victim")[1:]
    assert again["pid"] != first["pid"]
    placements = [r.get(timeout=15) for r in others]
    assert all(p["pid"] != first["pid"] for p in placements)
    # The crash was counted in the result backend's ledger (RabbitMQ counts nothing).
    assert tasks.app.backend.crash_count(victim.id) == 1


def test_acks_come_after_the_result_is_stored(
    project: MakeProject, tasks_dir: Path, run_worker: RunWorker
) -> None:
    tasks = project().module
    # The child dies right after storing each result, before it can ack.
    worker = run_worker("-c", "1", env={"CELERIAC_CRASH_AT": "after_store"})
    result = tasks.where.delay("stored")
    placement = result.get(timeout=15)
    assert placement["redelivered"] is False
    # The message was not acked: RabbitMQ redelivers it, and the copy is recognised as
    # finished and acked without running again.
    wait_for(lambda: "already finished" in worker.output(), timeout=15, what="the redelivery")
    assert len(started(tasks_dir, "stored")) == 1


def test_a_message_that_keeps_killing_workers_is_dead_lettered_with_redis_results(
    project: MakeProject, tasks_dir: Path, run_worker: RunWorker
) -> None:
    made = project()
    tasks = made.module
    one = run_worker("-c", "2", "-n", "one@%h")
    two = run_worker("-c", "2", "-n", "two@%h")
    result = tasks.always_die.delay()
    with pytest.raises(WorkerLostError, match=r"died [0-9]+ times"):
        result.get(timeout=30)
    [letter] = tasks.app.broker.list_dead_letters()
    assert letter.queue == made.queue
    assert letter.message.task_id == result.id
    noted = int(re.search("died ([0-9]+) times", letter.reason).group(1))  # type: ignore[union-attr]
    assert letter.reason == f"WorkerLostError: process died {noted} times running it"
    runs = len(started(tasks_dir, "always_die"))
    # The cap is 3 deaths. A death is counted when its supervisor reaps the child, while
    # RabbitMQ hands the message to another idle consumer at once: with four consumers
    # it may run up to three more times before the count catches up.
    assert 3 <= noted <= runs <= 6
    # Both workers go on with other work.
    assert {tasks.where.delay().get(timeout=10)["ppid"] for _ in range(6)} <= {one.pid, two.pid}


def test_with_rpc_results_each_worker_counts_the_deaths_itself(
    project: MakeProject, tasks_dir: Path, run_worker: RunWorker
) -> None:
    # rpc:// keeps no shared crash ledger: the supervisor counts its own children's
    # deaths and the children it forks afterwards see the count.
    made = project(backend="rpc")
    tasks = made.module
    worker = run_worker("-c", "1")
    result = tasks.always_die.delay()
    with pytest.raises(WorkerLostError, match="died 3 times"):
        result.get(timeout=30)
    assert len(started(tasks_dir, "always_die")) == 3
    [letter] = tasks.app.broker.list_dead_letters()
    assert letter.reason == "WorkerLostError: process died 3 times running it"
    assert tasks.where.delay().get(timeout=10)["ppid"] == worker.pid


def test_with_rpc_results_a_task_killed_at_its_time_limit_is_not_run_forever(
    project: MakeProject, tasks_dir: Path, run_worker: RunWorker
) -> None:
    # The redelivered copy cannot see the recorded TimeLimitExceeded (nothing to look
    # up with rpc://): each kill counts toward the cap instead.
    tasks = project(backend="rpc").module
    run_worker("-c", "1")
    result = tasks.hard.delay()
    with pytest.raises(WorkerLostError, match="died 3 times"):
        result.get(timeout=30)
    assert len(started(tasks_dir, "hard")) == 3


# -- priorities and routes ---------------------------------------------------------------


def test_higher_priority_tasks_run_first_on_a_busy_worker(
    project: MakeProject, tasks_dir: Path, run_worker: RunWorker
) -> None:
    tasks = project(max_priority=10).module
    # One slot, one message in its window: the queue orders what waits.
    run_worker("-c", "1", "--prefetch-multiplier", "1")
    blocker = tasks.gated.delay("blocker")
    wait_for(lambda: started(tasks_dir, "blocker"), timeout=10)
    low = [tasks.where.apply_async((f"low-{n}",), priority=1) for n in range(3)]
    high = [tasks.where.apply_async((f"high-{n}",), priority=9) for n in range(3)]
    (tasks_dir / "open").touch()
    assert blocker.get(timeout=10) == "blocker"
    placements = [r.get(timeout=10) for r in low + high]
    assert [p["priority"] for p in placements] == [1, 1, 1, 9, 9, 9]
    order = [e["key"] for e in events(tasks_dir) if e["event"] == "start"]
    assert order == ["blocker", "high-0", "high-1", "high-2", "low-0", "low-1", "low-2"]


def test_routes_and_a_named_exchange_reach_the_worker_consuming_the_queue(
    project: MakeProject, tasks_dir: Path, run_worker: RunWorker
) -> None:
    by_name, by_exchange, exchange = unique("aw-q"), unique("aw-r"), unique("aw-x")
    made = project(
        routes={
            "tasks.add": {"queue": by_name},
            "tasks.where": {"queue": by_exchange, "exchange": exchange, "routing_key": "rk.where"},
        },
        extra_queues=(by_name, by_exchange),
        exchanges=(exchange,),
    )
    tasks = made.module
    run_worker("-c", "1", "-Q", f"{by_name},{by_exchange}")
    assert tasks.add.delay(2, 3).get(timeout=10) == 5
    placement = tasks.where.delay("routed").get(timeout=10)
    assert (placement["exchange"], placement["routing_key"]) == (exchange, "rk.where")
    assert placement["queue"] == by_exchange
    # The default queue is not consumed by this worker (-Q): its task waits there.
    waiting = tasks.mul.delay(2, 3)
    wait_for(lambda: tasks.app.broker.size(made.queue) == 1, timeout=5)
    assert waiting.state == states.PENDING


# -- rpc:// results ------------------------------------------------------------------------


def test_rpc_results_answer_delay_chains_and_failures(
    project: MakeProject, run_worker: RunWorker
) -> None:
    tasks = project(backend="rpc").module
    assert tasks.app.result_backend_url == "rpc://"  # the default with an AMQP broker
    run_worker("-c", "2")
    assert tasks.add.delay(2, 2).get(timeout=10) == 4
    assert chain(tasks.add.s(1, 2), tasks.mul.s(10))().get(timeout=10) == 30
    with pytest.raises(ValueError, match="boom"):
        tasks.fail.delay("boom").get(timeout=10)
    failing = chain(tasks.add.s(1, 1), tasks.fail.si("midway"), tasks.add.s(1))()
    with pytest.raises(ValueError, match="midway"):
        failing.get(timeout=10)


def test_rpc_threads_of_one_producer_each_get_their_own_results(
    project: MakeProject, run_worker: RunWorker
) -> None:
    tasks = project(backend="rpc").module
    run_worker("-c", "2")
    got: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def client(base: int) -> None:
        try:
            results = [tasks.add.delay(base, n) for n in range(20)]
            results.append(chain(tasks.add.s(base, 1), tasks.mul.s(2))())
            got[base] = [r.get(timeout=20) for r in results]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(1000 * n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert got == {
        1000 * n: [1000 * n + k for k in range(20)] + [(1000 * n + 1) * 2] for n in range(4)
    }
