"""Shared pieces of the Redis interoperability tests: the same tasks written once for a
celeriac app and once for a stock Celery 5.7 app, and a stock `celery worker` process.

Both apps share one Redis, one key prefix (broker and results) and one queue, so a
message either side sends can run on either side's worker and either side's
`AsyncResult` reads the result. Every task that can say so reports which implementation
ran it (`impl`) and in which process (`pid`): the ground truth of who did the work.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil
import redis

from tests.helpers import wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# The task bodies both apps share; `app` and `IMPL` come from the header above them.
TASKS = """
@app.task(name="interop.add")
def add(x, y):
    return x + y


@app.task(name="interop.mul")
def mul(x, y):
    return x * y


@app.task(name="interop.tsum")
def tsum(values):
    return sum(values)


@app.task(name="interop.whoami")
def whoami(tag):
    return {"tag": tag, "impl": IMPL, "pid": os.getpid(), "at": time.time()}


@app.task(name="interop.double")
def double(n):
    return {"value": 2 * n, "impl": IMPL, "pid": os.getpid()}


@app.task(name="interop.collect")
def collect(parts):
    # Counts its runs in Redis: a chord body must run exactly once.
    client = redis.Redis.from_url(URL)
    runs = client.incr(PREFIX + "collect-runs")
    client.close()
    return {
        "total": sum(part["value"] for part in parts),
        "impls": sorted({part["impl"] for part in parts}),
        "runs": runs,
    }


@app.task(name="interop.on_error")
def on_error(*args):
    # Celery calls an errback that takes *args in the worker, as (request, exc, traceback);
    # one that cannot take three arguments gets the failed task's id in a message.
    record = {"impl": IMPL, "args": len(args), "exc": repr(args[1]) if len(args) > 1 else None}
    client = redis.Redis.from_url(URL)
    client.rpush(PREFIX + "errbacks", json.dumps(record))
    client.close()


@app.task(name="interop.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="interop.nap")
def nap(seconds, tag):
    started = time.time()
    time.sleep(seconds)
    return {"tag": tag, "impl": IMPL, "pid": os.getpid(), "at": started}
"""

CELERIAC_HEADER = """
import json
import os
import time

import redis

from celeriac import Celeriac

IMPL = "celeriac"
URL = {url!r}
PREFIX = {prefix!r}
app = Celeriac(
    "interop",
    broker={url!r},
    backend={url!r},
    task_default_queue={queue!r},
    broker_transport_options={broker_options!r},
    result_backend_transport_options={{"global_keyprefix": {prefix!r}}},
)
"""

CELERY_HEADER = """
import json
import os
import time

import celery
import redis

IMPL = "celery"
URL = {url!r}
PREFIX = {prefix!r}
app = celery.Celery("interop", broker={url!r}, backend={url!r}, set_as_current=False)
app.conf.update(
    task_default_queue={queue!r},
    broker_transport_options={broker_options!r},
    result_backend_transport_options={{"global_keyprefix": {prefix!r}}},
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
)
"""


@dataclass(frozen=True)
class Shared:
    """Where both sides meet: the Redis URL, the key prefix and the queue."""

    url: str
    prefix: str
    queue: str
    broker_options: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        return {"global_keyprefix": self.prefix, **self.broker_options}

    def celeriac_source(self, **broker_options: Any) -> str:
        header = CELERIAC_HEADER.format(
            url=self.url,
            queue=self.queue,
            prefix=self.prefix,
            broker_options={**self.options(), **broker_options},
        )
        return textwrap.dedent(header) + TASKS

    def celery_source(self) -> str:
        header = CELERY_HEADER.format(
            url=self.url, queue=self.queue, prefix=self.prefix, broker_options=self.options()
        )
        return textwrap.dedent(header) + TASKS

    def errbacks(self) -> list[dict[str, Any]]:
        """What `interop.on_error` recorded, in call order."""
        client = redis.Redis.from_url(self.url)
        try:
            return [json.loads(raw) for raw in client.lrange(self.prefix + "errbacks", 0, -1)]
        finally:
            client.close()

    def delete_keys(self) -> None:
        """Remove every key this test wrote (broker and results share the prefix)."""
        client = redis.Redis.from_url(self.url)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
        finally:
            client.close()


def close_stock_app(app: Any) -> None:
    """Close everything a stock Celery app in the test process opened.

    `app.close()` leaves the result backend's connections to the garbage collector, which
    then warns (ResourceWarning) in whichever later test it happens to run. A stock
    AsyncResult unsubscribes when it is collected, reopening the pub/sub connection if it
    still thinks it is subscribed: collect those first, forget their subscriptions, then
    close the backend's connections and the broker pool.
    """
    gc.collect()
    backend = getattr(app._local, "backend", None)  # never build one just to close it
    consumer = getattr(backend, "result_consumer", None)
    if consumer is not None:
        consumer.stop()
        subscribed = getattr(consumer, "subscribed_to", None)
        if subscribed is not None:
            subscribed.clear()
    client = getattr(backend, "client", None)
    if client is not None:
        client.connection_pool.disconnect()
    app.close()
    with contextlib.suppress(Exception):
        app.pool.force_close_all()


def assert_no_errors(log: str) -> None:
    """A worker's log (celeriac's or Celery's format) shows nothing going wrong."""
    assert "ERROR/" not in log, log
    assert "Traceback" not in log, log


def import_module(directory: Path, name: str) -> Any:
    """Import `directory/name.py` afresh in the test process."""
    sys.modules.pop(name, None)
    sys.path.insert(0, str(directory))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(directory))


@dataclass
class StockWorker:
    """A running stock `celery worker` and its output so far."""

    process: subprocess.Popen[str]
    lines: list[str]

    def output(self) -> str:
        return "".join(self.lines)

    def tail(self, count: int = 30) -> str:
        return "".join(self.lines[-count:])

    def forget_output(self) -> None:
        """Drop the output so far (after a test that made it log an expected error)."""
        self.lines.clear()

    def children(self) -> list[int]:
        """Pids of its pool processes (none for the solo pool)."""
        try:
            return [kid.pid for kid in psutil.Process(self.process.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def assert_healthy(self) -> None:
        """Still running, and nothing went wrong in it (no error logged)."""
        assert self.process.poll() is None, f"the stock worker exited:\n{self.tail()}"
        assert_no_errors(self.output())


@contextlib.contextmanager
def stock_worker(
    directory: Path, module: str, *args: str, name: str = "stock"
) -> Iterator[StockWorker]:
    """Run `celery -A <module> worker <args>` in `directory`; stopped by pid (its pool
    children too) when the block ends."""
    command = [
        sys.executable, "-m", "celery", "-A", module, "worker", "-n", f"{name}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info", *args,
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(directory), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command,
        cwd=directory,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    worker = StockWorker(process, lines)
    children: set[int] = set()
    try:
        wait_for(
            lambda: " ready." in worker.output() or process.poll() is not None,
            timeout=60,
            what="the stock worker to start",
        )
        assert process.poll() is None, f"the stock worker exited:\n{worker.tail()}"
        with contextlib.suppress(psutil.NoSuchProcess):
            children.update(kid.pid for kid in psutil.Process(process.pid).children())
        yield worker
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            children.update(kid.pid for kid in psutil.Process(process.pid).children())
        # A stock worker takes seconds to close its connections on a warm shutdown; the
        # tests wait for their results first, so a short grace period then a kill is fine.
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        reader.join(5)
        if process.stdout is not None:
            process.stdout.close()
