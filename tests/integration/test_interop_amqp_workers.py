"""Worker-level interoperability with stock Celery 5.7 on RabbitMQ (results in Redis).

Two real worker processes share the module, each on its own queue plus one queue
they share:

- a celeriac worker (`celeriac worker -c 1 --prefetch-multiplier 1 -Q A,M`) runs what
  a stock Celery producer in this process sends to A;
- a stock worker (`celery worker -P threads -c 1 -Q B,M`, prefetch multiplier 1,
  acks late) runs what a celeriac producer in this process sends to B;
- both drain queue M together (the mixed fleet).

Both projects define the same task names (`interop.*`), each answering with its own
`side`, so every result says who ran it. Results go to one Redis key prefix, read with
the producing side's own `AsyncResult` (the chord needs a joining backend: `rpc://` has
none). Every queue, exchange and key the module made is removed at the end.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from celeriac import Celeriac, chain, chord, group
from celeriac.exceptions import ResultTimeout
from tests.helpers import AMQP_URL, REDIS_URL, require_rabbitmq, require_redis, unique, wait_for
from tests.integration.conftest import WorkerProcess
from tests.integration.interop_redis import close_stock_app
from tests.integration.test_amqp_worker import delete_amqp, delete_redis_keys

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.slow]

# kombu/celery are only partly typed; the tests drive them as stock users do.
celery: Any = importlib.import_module("celery")

# What each side's tasks do; `{side}` says who ran it. Formatted per project.
TASKS = """
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def record(key, **fields):
    line = json.dumps({{"key": key, "side": {side!r}, "pid": os.getpid(), "time": time.time(),
                       **fields}})
    with open(HERE / "events.log", "a") as log:
        log.write(line + "\\n")


@app.task(name="interop.add")
def add(x, y):
    return x + y


@app.task(name="interop.mul")
def mul(x, y):
    return x * y


@app.task(name="interop.tsum")
def tsum(values):
    return sum(values)


@app.task(name="interop.fail")
def fail(text):
    raise ValueError(text)


@app.task(name="interop.sleeper")
def sleeper(seconds, key):
    record(key)
    time.sleep(seconds)
    return key


@app.task(name="interop.where", bind=True)
def where(self, key):
    record(key, priority=self.request.delivery_info.get("priority"))
    return {{"side": {side!r}, "key": key, "time": time.time()}}


@app.task(name="interop.double")
def double(n):
    return [2 * n, {side!r}]
"""

OURS = """
from celeriac import Celeriac

app = Celeriac(
    "ours",
    broker={broker!r},
    backend={backend!r},
    task_default_queue={queue!r},
    task_queue_max_priority=10,
    broker_transport_options={{"dead_letter_queue": {dead!r}}},
    result_backend_transport_options={{"global_keyprefix": {prefix!r}}},
)
"""

STOCK = """
import celery

app = celery.Celery("stock", broker={broker!r}, backend={backend!r})
app.conf.update(
    task_default_queue={queue!r},
    task_queue_max_priority=10,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    result_backend_transport_options={{"global_keyprefix": {prefix!r}}},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
"""


@dataclass
class Fleet:
    """The module's workers, queues and producers."""

    directory: Path
    ours_queue: str  # consumed by the celeriac worker only
    stock_queue: str  # consumed by the stock worker only
    shared_queue: str  # consumed by both
    prefix: str
    ours: WorkerProcess
    stock: WorkerProcess
    celery_app: Any  # a stock Celery producer, default queue: ours_queue
    celeriac_app: Celeriac  # a celeriac producer, default queue: stock_queue

    def events(self) -> list[dict[str, Any]]:
        path = self.directory / "events.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def outputs(self) -> str:
        return f"--- celeriac ---\n{self.ours.output()}\n--- celery ---\n{self.stock.output()}"


def start(command: list[str], directory: Path, name: str, ready: str) -> WorkerProcess:
    log = directory / f"{name}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command,
            cwd=directory,
            stdout=handle,
            stderr=handle,
            env={**os.environ, "PYTHONPATH": str(directory), "PYTHONUNBUFFERED": "1"},
        )
    worker = WorkerProcess(process, directory, log)
    try:
        wait_for(
            lambda: ready in worker.output() or process.poll() is not None,
            timeout=60,
            what=f"{name} worker start",
        )
    except BaseException:
        worker.stop()
        raise
    if process.poll() is not None:
        pytest.fail(f"{name} worker exited at start:\n{worker.output()}")
    return worker


def stop_stock(worker: WorkerProcess) -> None:
    """A stock worker takes seconds to close its connections; with nothing in flight a
    short grace period, then a kill, is enough."""
    if worker.process.poll() is None:
        worker.process.send_signal(signal.SIGTERM)
        try:
            worker.process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait(timeout=5)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_rabbitmq()
    require_redis()
    directory: Path = tmp_path_factory.mktemp("interop")
    name = unique("ia")
    ours_queue, stock_queue, shared_queue = f"{name}.ours", f"{name}.stock", f"{name}.shared"
    dead = f"{name}.dead"
    prefix = f"{name}:"
    common = {"broker": AMQP_URL, "backend": REDIS_URL, "prefix": prefix}
    (directory / "ours.py").write_text(
        textwrap.dedent(OURS.format(queue=ours_queue, dead=dead, **common))
        + TASKS.format(side="celeriac")
    )
    (directory / "stock.py").write_text(
        textwrap.dedent(STOCK.format(queue=stock_queue, **common)) + TASKS.format(side="celery")
    )
    ours: WorkerProcess | None = None
    stock: WorkerProcess | None = None
    celery_app = celery.Celery("producer", broker=AMQP_URL, backend=REDIS_URL, set_as_current=False)
    celery_app.conf.update(
        task_default_queue=ours_queue,
        task_queue_max_priority=10,
        result_backend_transport_options={"global_keyprefix": prefix},
    )
    celeriac_app = Celeriac(
        "producer",
        broker=AMQP_URL,
        backend=REDIS_URL,
        task_default_queue=stock_queue,
        task_queue_max_priority=10,
        broker_transport_options={"dead_letter_queue": dead},
        result_backend_transport_options={"global_keyprefix": prefix},
        set_as_current=False,
    )
    try:
        ours = start(
            [sys.executable, "-m", "celeriac", "-A", "ours", "worker", "-l", "info",
             "-c", "1", "--prefetch-multiplier", "1", "-n", f"ours-{name}@%h",
             "-Q", f"{ours_queue},{shared_queue}"],
            directory, "celeriac", " ready",
        )  # fmt: skip
        stock = start(
            [sys.executable, "-m", "celery", "-A", "stock", "worker", "-l", "info",
             "-P", "threads", "-c", "1", "-n", f"stock-{name}@%h",
             "-Q", f"{stock_queue},{shared_queue}",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            directory, "celery", " ready.",
        )  # fmt: skip
        yield Fleet(
            directory,
            ours_queue,
            stock_queue,
            shared_queue,
            prefix,
            ours,
            stock,
            celery_app,
            celeriac_app,
        )
    finally:
        if stock is not None:
            stop_stock(stock)
        if ours is not None:
            ours.stop()
        celeriac_app.close()
        close_stock_app(celery_app)
        delete_amqp(AMQP_URL, [ours_queue, stock_queue, shared_queue, dead], [])
        delete_redis_keys(REDIS_URL, prefix)


def started_keys(fleet: Fleet, prefix: str) -> list[str]:
    return [e["key"] for e in fleet.events() if e["key"].startswith(prefix)]


# -- a stock Celery producer, a celeriac worker -------------------------------------------


def test_stock_delay_and_failure_run_on_our_worker(fleet: Fleet) -> None:
    app = fleet.celery_app
    assert app.send_task("interop.add", (2, 3)).get(timeout=10) == 5
    assert app.send_task("interop.where", ("c-delay",)).get(timeout=10)["side"] == "celeriac"
    failed = app.send_task("interop.fail", ("from celery",))
    with pytest.raises(ValueError, match="from celery"):
        failed.get(timeout=10)
    # The celeriac worker ran it (and logged it), not the stock one.
    assert failed.id in fleet.ours.output(), fleet.outputs()
    assert failed.id not in fleet.stock.output(), fleet.outputs()


def test_stock_countdown_runs_on_our_worker_on_time(fleet: Fleet) -> None:
    sent = time.time()
    placed = fleet.celery_app.send_task("interop.where", ("c-countdown",), countdown=2)
    ran = placed.get(timeout=15)
    assert ran["side"] == "celeriac"
    assert sent + 2 <= ran["time"] < sent + 3.5


def test_stock_priorities_order_our_busy_worker(fleet: Fleet) -> None:
    app = fleet.celery_app
    blocker = app.send_task("interop.sleeper", (1.5, "cp-blocker"))
    wait_for(lambda: started_keys(fleet, "cp-blocker"), timeout=10)
    low = [app.send_task("interop.where", (f"cp-low-{n}",), priority=1) for n in range(3)]
    high = [app.send_task("interop.where", (f"cp-high-{n}",), priority=9) for n in range(3)]
    assert blocker.get(timeout=10) == "cp-blocker"
    for result in low + high:
        assert result.get(timeout=10)["side"] == "celeriac"
    assert started_keys(fleet, "cp-") == [
        "cp-blocker", "cp-high-0", "cp-high-1", "cp-high-2", "cp-low-0", "cp-low-1", "cp-low-2",
    ]  # fmt: skip
    priorities = {e["key"]: e.get("priority") for e in fleet.events()}
    assert (priorities["cp-low-0"], priorities["cp-high-0"]) == (1, 9)


def test_stock_link_and_canvas_run_on_our_worker(fleet: Fleet) -> None:
    app = fleet.celery_app
    sig = app.signature
    callback = sig("interop.mul", (10,))
    callback.freeze()
    assert sig("interop.add", (2, 2)).apply_async(link=callback).get(timeout=10) == 4
    assert app.AsyncResult(callback.id).get(timeout=10) == 40
    assert (
        celery.chain(sig("interop.add", (1, 2)), sig("interop.mul", (10,)))().get(timeout=10) == 30
    )
    assert celery.group(sig("interop.add", (n, n)) for n in range(5))().get(timeout=10) == [
        0, 2, 4, 6, 8,
    ]  # fmt: skip
    body = sig("interop.tsum")
    assert celery.chord([sig("interop.add", (n, n)) for n in range(5)])(body).get(timeout=10) == 20


# -- a celeriac producer, a stock Celery worker -------------------------------------------


def test_our_delay_and_failure_run_on_a_stock_worker(fleet: Fleet) -> None:
    app = fleet.celeriac_app
    assert app.send_task("interop.add", (2, 3)).get(timeout=10) == 5
    assert app.send_task("interop.where", ("o-delay",)).get(timeout=10)["side"] == "celery"
    failed = app.send_task("interop.fail", ("from celeriac",))
    with pytest.raises(ValueError, match="from celeriac"):
        failed.get(timeout=10)
    # The stock worker ran it (and logged it), not the celeriac one.
    assert failed.id in fleet.stock.output(), fleet.outputs()
    assert failed.id not in fleet.ours.output(), fleet.outputs()


def test_our_countdown_runs_on_a_stock_worker_on_time(fleet: Fleet) -> None:
    sent = time.time()
    ran = fleet.celeriac_app.send_task("interop.where", ("o-countdown",), countdown=2).get(
        timeout=15
    )
    assert ran["side"] == "celery"
    assert sent + 2 <= ran["time"] < sent + 3.5


def test_our_priorities_order_a_busy_stock_worker(fleet: Fleet) -> None:
    app = fleet.celeriac_app
    blocker = app.send_task("interop.sleeper", (1.5, "op-blocker"))
    wait_for(lambda: started_keys(fleet, "op-blocker"), timeout=10)
    low = [app.send_task("interop.where", (f"op-low-{n}",), priority=1) for n in range(3)]
    high = [app.send_task("interop.where", (f"op-high-{n}",), priority=9) for n in range(3)]
    assert blocker.get(timeout=10) == "op-blocker"
    for result in low + high:
        assert result.get(timeout=10)["side"] == "celery"
    assert started_keys(fleet, "op-") == [
        "op-blocker", "op-high-0", "op-high-1", "op-high-2", "op-low-0", "op-low-1", "op-low-2",
    ]  # fmt: skip


def test_our_link_and_canvas_run_on_a_stock_worker(fleet: Fleet) -> None:
    app = fleet.celeriac_app
    sig = app.signature
    callback = sig("interop.mul", (10,))
    linked = callback.freeze()
    assert sig("interop.add", (2, 2)).apply_async(link=callback).get(timeout=10) == 4
    assert linked.get(timeout=10) == 40
    assert chain(sig("interop.add", (1, 2)), sig("interop.mul", (10,)))().get(timeout=10) == 30
    assert group(sig("interop.add", (n, n)) for n in range(5))().get(timeout=10) == [
        0, 2, 4, 6, 8,
    ]  # fmt: skip
    body = sig("interop.tsum")
    assert chord([sig("interop.add", (n, n)) for n in range(5)])(body).get(timeout=10) == 20


# -- a mixed fleet --------------------------------------------------------------------------


def test_a_mixed_fleet_drains_two_thousand_tasks_correctly(fleet: Fleet) -> None:
    queue = fleet.shared_queue
    expected: dict[str, int] = {}
    with fleet.celeriac_app.producer_batch():
        for n in range(1000):
            result = fleet.celeriac_app.send_task("interop.double", (n,), queue=queue)
            expected[result.id] = 2 * n
    for n in range(1000, 2000):
        result = fleet.celery_app.send_task("interop.double", (n,), queue=queue)
        expected[result.id] = 2 * n
    try:
        got = fleet.celeriac_app.backend.wait_many(list(expected), timeout=90)
    except ResultTimeout as exc:
        pytest.fail(f"{exc}\n{explain_missing(fleet, expected, first_celery=1000)}")
    assert {task_id: meta.result[0] for task_id, meta in got.items()} == expected
    sides = [meta.result[1] for meta in got.values()]
    ran = {side: sides.count(side) for side in ("celeriac", "celery")}
    assert ran["celeriac"] >= 100, ran
    assert ran["celery"] >= 100, ran
    # Celery's own AsyncResult reads what celeriac's worker stored, and the other way.
    one_of_each = {meta.result[1]: task_id for task_id, meta in got.items()}
    for task_id in one_of_each.values():
        assert fleet.celery_app.AsyncResult(task_id).get(timeout=5) == got[task_id].result
        assert fleet.celeriac_app.AsyncResult(task_id).get(timeout=5) == got[task_id].result


def explain_missing(fleet: Fleet, expected: dict[str, int], *, first_celery: int) -> str:
    """For each task whose result never came: who sent it, what Redis holds for it, and
    what each worker's log says about it."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    lines = []
    try:
        found = fleet.celeriac_app.backend.get_many(list(expected))
        ready = {task_id for task_id, meta in found.items() if meta.is_ready}
        for position, task_id in enumerate(expected):
            if task_id in ready:
                continue
            sender = "celery" if position >= first_celery else "celeriac"
            stored = client.get(f"{fleet.prefix}celery-task-meta-{task_id}")
            lines.append(f"{task_id} (#{position}, sent by {sender}) stored={stored!r}")
            for side, worker in (("celeriac", fleet.ours), ("celery", fleet.stock)):
                seen = [line for line in worker.output().splitlines() if task_id in line]
                lines.append(f"  {side} log: {seen}")
    finally:
        client.close()
    return "\n".join(lines)


# -- rpc:// results across the two ----------------------------------------------------------


@pytest.fixture
def rpc_queue() -> Iterator[str]:
    require_rabbitmq()
    queue = unique("ia-rpc")
    yield queue
    delete_amqp(AMQP_URL, [queue, f"{queue}.dead"], [])


def rpc_project(directory: Path, queue: str, *, stock: bool) -> None:
    """A project whose workers send results to the caller's reply queue (rpc://)."""
    if stock:
        header = f"""
import celery

app = celery.Celery("stock", broker={AMQP_URL!r}, backend="rpc://")
app.conf.update(task_default_queue={queue!r}, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)
"""
        module, side = "stock", "celery"
    else:
        header = f"""
from celeriac import Celeriac

app = Celeriac("ours", broker={AMQP_URL!r}, task_default_queue={queue!r},
               broker_transport_options={{"dead_letter_queue": {queue + ".dead"!r}}})
"""
        module, side = "ours", "celeriac"
    (directory / f"{module}.py").write_text(header + TASKS.format(side=side))


def test_a_stock_rpc_client_reads_what_our_worker_sends(tmp_path: Path, rpc_queue: str) -> None:
    rpc_project(tmp_path, rpc_queue, stock=False)
    worker = start(
        [sys.executable, "-m", "celeriac", "-A", "ours", "worker", "-l", "info", "-c", "1",
         "-n", f"{rpc_queue}@%h"],
        tmp_path, "celeriac", " ready",
    )  # fmt: skip
    app = celery.Celery("client", broker=AMQP_URL, backend="rpc://", set_as_current=False)
    app.conf.task_default_queue = rpc_queue
    try:
        sig = app.signature
        assert app.send_task("interop.add", (2, 3)).get(timeout=10) == 5
        assert app.send_task("interop.where", ("rpc",)).get(timeout=10)["side"] == "celeriac"
        assert (
            celery.chain(sig("interop.add", (1, 2)), sig("interop.mul", (10,)))().get(timeout=10)
            == 30
        )
        with pytest.raises(ValueError, match="over rpc"):
            app.send_task("interop.fail", ("over rpc",)).get(timeout=10)
    finally:
        worker.stop()
        close_stock_app(app)  # Celery's rpc client keeps a connection open


def test_our_rpc_client_reads_what_a_stock_worker_sends(tmp_path: Path, rpc_queue: str) -> None:
    rpc_project(tmp_path, rpc_queue, stock=True)
    worker = start(
        [sys.executable, "-m", "celery", "-A", "stock", "worker", "-l", "info", "-P", "threads",
         "-c", "1", "-n", f"{rpc_queue}@%h", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        tmp_path, "celery", " ready.",
    )  # fmt: skip
    app = Celeriac("client", broker=AMQP_URL, task_default_queue=rpc_queue, set_as_current=False)
    try:
        sig = app.signature
        assert app.send_task("interop.add", (2, 3)).get(timeout=10) == 5
        assert app.send_task("interop.where", ("rpc",)).get(timeout=10)["side"] == "celery"
        assert chain(sig("interop.add", (1, 2)), sig("interop.mul", (10,)))().get(timeout=10) == 30
        with pytest.raises(ValueError, match="over rpc"):
            app.send_task("interop.fail", ("over rpc",)).get(timeout=10)
    finally:
        stop_stock(worker)
        worker.stop()
        app.close()
