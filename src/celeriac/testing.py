"""Helpers for testing code that uses celeriac: a worker in a thread, and a memory app.

```python
from celeriac.testing import memory_app, start_worker

app = memory_app()

@app.task
def add(x, y):
    return x + y

with start_worker(app):
    assert add.delay(2, 2).get(timeout=5) == 4
```

With pytest, the plugin in `celeriac.contrib.pytest` offers the same as fixtures
(`celeriac_app`, `celeriac_worker`, `celeriac_config`, `celeriac_clock`; see
docs/testing.md).

The worker runs the real consumer and executor (leases, retries, canvas, results) on
threads in this process; signals, time limits by alarm and child processes are the
worker command's business and are not used here.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from typing import TYPE_CHECKING, Any

from celeriac.app.base import Celeriac
from celeriac.worker.consumer import Consumer
from celeriac.worker.holdings import Shutdown
from celeriac.worker.limits import ThreadTimeLimits

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from celeriac.brokers.base import Broker

__all__ = ["TestWorker", "memory_app", "start_worker"]


def memory_app(main: str = "tests", **settings: Any) -> Celeriac:
    """An app on a fresh in-memory broker and result backend of its own."""
    name = uuid.uuid4().hex[:12]
    return Celeriac(main, broker=f"memory://{name}", backend=f"memory://{name}", **settings)


class TestWorker:
    """A worker running in a background thread of this process."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        app: Celeriac,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 1,
        prefetch: int = 4,
        hostname: str | None = None,
    ) -> None:
        self.app = app
        self.queues = list(queues or [app.conf.task_default_queue])
        self.hostname = hostname or f"test-{uuid.uuid4().hex[:6]}@localhost"
        self.shutdown = Shutdown()
        self.broker: Broker = app.create_broker(consumer_id=f"{self.hostname}:thread")
        self.consumer = Consumer(
            app,
            self.broker,
            hostname=self.hostname,
            limits=ThreadTimeLimits(),
            run_async=_run_coroutine,
            queues=self.queues,
            prefetch=prefetch,
            shutdown=self.shutdown,
            concurrency=concurrency,
            receive_timeout=0.05,
        )
        self.executor = self.consumer.executor
        self._thread = threading.Thread(target=self._run, name="celeriac-test-worker", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.broker.connect()
            self.consumer.run()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
        finally:
            self.broker.close()

    def start(self) -> TestWorker:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Warm shutdown: finish running tasks, return prefetched ones, join the thread."""
        self.shutdown.warm.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the test worker did not stop in time")
        if self.error is not None:
            raise self.error


def _run_coroutine(coroutine: Any) -> Any:
    import asyncio

    return asyncio.run(coroutine)


@contextlib.contextmanager
def start_worker(app: Celeriac, **options: Any) -> Iterator[TestWorker]:
    """Run a `TestWorker` for the duration of the block."""
    worker = TestWorker(app, **options).start()
    try:
        yield worker
    finally:
        worker.stop()
