"""An ASGI app (FastAPI) that sends tasks and awaits their results on the event loop.

The endpoints use `await task.adelay(...)`, `await result.aget(timeout=...)` and
`await group(...).adelay()` / `.aget()`; a real worker process runs the tasks, on each
broker. With Redis results, many requests waiting at once use no thread at all: every
wait is a subscription on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.conftest import import_tasks, write_tasks

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import RunWorker

pytestmark = pytest.mark.integration

TASKS = """
import os
import time
from pathlib import Path

from fastapi import FastAPI

from celeriac import Celeriac, group

HERE = Path(__file__).parent
key_prefix = os.environ.get("TEST_KEY_PREFIX")
prefix = {"global_keyprefix": key_prefix} if key_prefix else {}
app = Celeriac(
    "tasks",
    broker=os.environ.get("TEST_BROKER_URL") or f"sqlite:///{HERE / 'celeriac.db'}",
    backend=os.environ.get("TEST_BACKEND_URL") or None,
    task_default_queue=os.environ["TEST_QUEUE"],
    broker_transport_options=prefix,
    result_backend_transport_options=prefix,
)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def nap(value: int, seconds: float) -> int:
    time.sleep(seconds)
    return value


web = FastAPI()


@web.get("/add")
async def add_endpoint(x: int, y: int) -> dict:
    result = await add.adelay(x, y)
    return {"id": result.id, "sum": await result.aget(timeout=30)}


@web.get("/sums")
async def sums_endpoint(n: int) -> dict:
    result = await group(add.s(i, i) for i in range(n)).adelay()
    return {"sums": await result.aget(timeout=30)}
"""


@pytest.fixture
def asgi_tasks(tasks_dir: Path, broker_env: str) -> Any:
    write_tasks(tasks_dir, TASKS)
    return import_tasks(tasks_dir)


def test_endpoints_await_task_results(asgi_tasks: Any, run_worker: RunWorker) -> None:
    import httpx

    run_worker("-P", "threads", "-c", "4")

    async def main() -> tuple[Any, Any]:
        transport = httpx.ASGITransport(app=asgi_tasks.web)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            single = await client.get("/add", params={"x": 2, "y": 3})
            many = await client.get("/sums", params={"n": 10})
        return single.json(), many.json()

    single, many = asyncio.run(main())
    assert single["sum"] == 5
    assert many["sums"] == [2 * i for i in range(10)]


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, counting what is handed to a thread."""

    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


# Redis results on both: RabbitMQ runs with Redis results here (SQLite results are polled
# from the loop's thread pool, by design).
@pytest.mark.parametrize("broker_env", ["redis", "amqp"], indirect=True)
def test_redis_waits_take_no_thread(asgi_tasks: Any, run_worker: RunWorker) -> None:
    waits = 50
    run_worker("-P", "threads", "-c", str(waits))

    async def main() -> tuple[list[int], int, int, int]:
        # Sent first (each send is handed to the thread pool), then waited on together.
        results = [await asgi_tasks.nap.adelay(n, 0.5) for n in range(waits)]
        executor = CountingExecutor()
        asyncio.get_running_loop().set_default_executor(executor)
        threads_before = threading.active_count()
        peak = threads_before

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, threading.active_count())
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        values = await asyncio.gather(*(result.aget(timeout=30) for result in results))
        watcher.cancel()
        return list(values), executor.submitted, threads_before, peak

    values, submitted, before, peak = asyncio.run(main())
    assert values == list(range(waits))
    assert submitted == 0
    assert peak == before
