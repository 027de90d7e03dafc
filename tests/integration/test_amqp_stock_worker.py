"""A stock Celery 5.7 worker runs tasks our broker publishes (ETA included) and sends
results our rpc:// backend reads: the layouts really are Celery's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import amqp
import pytest

from celeriac._time import utcnow
from celeriac.backends.rpc import RPCBackend
from celeriac.brokers.amqp.broker import AMQPBroker
from celeriac.brokers.amqp.delay import DelayLayout
from celeriac.protocol.codec import TaskCall, encode_task
from tests.helpers import AMQP_URL, amqp_connection_args, require_rabbitmq, unique, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.rabbitmq, pytest.mark.integration, pytest.mark.slow]

TASKS = """
import os
import time
import celery

app = celery.Celery("stockproj", broker={broker!r}, backend="rpc://")
app.conf.result_expires = 600

@app.task(name="stockproj.when")
def when(tag):
    # Who ran it: the stock worker's own process (solo pool).
    return {{"tag": tag, "ran_at": time.time(), "pid": os.getpid()}}
"""


@dataclass
class StockWorker:
    queue: str
    process: subprocess.Popen[str]
    output: list[str]


@pytest.fixture(scope="module")
def stock_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StockWorker]:
    require_rabbitmq()
    home: Path = tmp_path_factory.mktemp("stockproj")
    (home / "stockproj.py").write_text(textwrap.dedent(TASKS.format(broker=AMQP_URL)))
    queue = unique("stock")
    env = {**os.environ, "PYTHONPATH": str(home)}
    process = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "stockproj", "worker", "-P", "solo",
            "-Q", queue, "-n", f"{queue}@localhost", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-l", "info",
        ],
        cwd=home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(" ready." in line for line in output), timeout=60, what="worker")
        yield StockWorker(queue, process, output)
    finally:
        # A stock worker takes ~8 s to close its connections on shutdown; it has no
        # work in flight here, so a short grace period then a kill is enough.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        reader.join(5)
        if process.stdout is not None:
            process.stdout.close()
        conn = amqp.Connection(**amqp_connection_args())
        conn.connect()
        channel = conn.channel()
        for name in [queue, *DelayLayout().queues_of(queue)]:
            channel.queue_delete(name)
        channel.exchange_delete(queue)
        conn.close()


@pytest.fixture
def rpc() -> Iterator[RPCBackend]:
    backend = RPCBackend("rpc://", transport_options={"broker_url": AMQP_URL}, expires=600)
    backend.ensure_reply_queue()
    yield backend
    backend.close()


def test_a_stock_worker_runs_our_task_and_replies_over_rpc(
    stock_worker: StockWorker, rpc: RPCBackend
) -> None:
    broker = AMQPBroker(AMQP_URL)
    call = TaskCall(
        name="stockproj.when", id=str(uuid.uuid4()), args=["now"], reply_to=rpc.reply_to
    )
    try:
        broker.publish(encode_task(call), queue=stock_worker.queue)
    finally:
        broker.close()
    meta = rpc.wait(call.id, timeout=30)
    assert meta.status == "SUCCESS", "".join(stock_worker.output[-20:])
    assert meta.result["tag"] == "now"
    assert meta.result["pid"] == stock_worker.process.pid


def test_our_eta_task_waits_on_the_broker_then_runs_on_a_stock_worker(
    stock_worker: StockWorker, rpc: RPCBackend
) -> None:
    broker = AMQPBroker(AMQP_URL)
    eta = utcnow() + timedelta(seconds=2.5)
    call = TaskCall(
        name="stockproj.when", id=str(uuid.uuid4()), args=["later"], eta=eta, reply_to=rpc.reply_to
    )
    try:
        broker.publish(encode_task(call), queue=stock_worker.queue, eta=eta)
        time.sleep(1.0)
        # Still waiting on the broker (in the delay ladder), not unacked in the worker.
        assert broker.size(stock_worker.queue) == 1
    finally:
        broker.close()
    meta = rpc.wait(call.id, timeout=30)
    assert meta.status == "SUCCESS", "".join(stock_worker.output[-20:])
    assert meta.result["pid"] == stock_worker.process.pid
    ran_at = meta.result["ran_at"]
    assert ran_at >= eta.timestamp()
    assert ran_at < eta.timestamp() + 3
