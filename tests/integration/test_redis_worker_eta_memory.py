"""100,000 far-future ETA tasks do not grow a celeriac worker's memory: they stay in Redis.

The messages arrive the way a stock Celery producer sends them (straight to the list,
the ETA only in the `eta` header), which is the hard case: the worker fetches every one
of them and must hand each back to the broker's delayed set instead of keeping it, as a
stock worker would, in memory until it is due. The worker's resident memory (supervisor
and children) is measured before and after. A private Redis keeps the 100k messages
(~80 MB) off the shared server.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

import psutil
import pytest

from celeriac._time import utcnow
from celeriac.protocol.codec import TaskCall, encode_task
from tests.helpers import wait_for
from tests.integration.conftest import RunWorker, WorkerProcess, import_tasks, write_tasks
from tests.integration.interop_redis import Shared, assert_no_errors
from tests.private_servers import PrivateRedis, require_redis_server

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.slow]

COUNT = 100_000
CHUNK = 5_000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    require_redis_server()
    directory = tmp_path / "redis"
    directory.mkdir()
    private = PrivateRedis(directory, "--appendonly", "no")  # nothing to keep on disk
    try:
        private.start()
        yield private
    finally:
        private.stop()


def stock_eta_envelopes(queue: str, count: int, *, eta_in: timedelta) -> Iterator[str]:
    """`count` kombu envelopes as a stock producer LPUSHes them for `countdown=...`."""
    eta = utcnow() + eta_in
    template = encode_task(TaskCall(name="interop.whoami", id="x", args=["far"], eta=eta))
    body = base64.b64encode(template.body).decode("ascii")
    for _ in range(count):
        task_id = str(uuid.uuid4())
        envelope = {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {**template.headers, "id": task_id, "root_id": task_id},
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        yield json.dumps(envelope)


def resident_bytes(worker: WorkerProcess) -> int:
    """Resident memory of the supervisor and all its children."""
    processes = [psutil.Process(worker.pid), *(psutil.Process(p) for p in worker.children())]
    return sum(process.memory_info().rss for process in processes)


def test_far_future_eta_tasks_wait_in_redis_not_in_the_worker(
    server: PrivateRedis, tasks_dir: Path, run_worker: RunWorker
) -> None:
    shared = Shared(url=server.url, prefix="", queue="eta")
    write_tasks(tasks_dir, shared.celeriac_source())
    tasks = import_tasks(tasks_dir)
    client = server.client()
    try:
        worker = run_worker("-c", "2", "--prefetch-multiplier", "50")
        # Warm up: imports, connections, scripts and allocator arenas are in place.
        assert [tasks.add.delay(n, n).get(timeout=10) for n in range(200)] == [
            2 * n for n in range(200)
        ]
        for envelope in stock_eta_envelopes(shared.queue, 200, eta_in=timedelta(days=1)):
            client.lpush(shared.queue, envelope)
        delayed = f"_celeriac.delayed.{shared.queue}"
        wait_for(lambda: client.zcard(delayed) == 200, timeout=20, what="warm-up deferrals")
        before = resident_bytes(worker)

        started = time.monotonic()
        envelopes = stock_eta_envelopes(shared.queue, COUNT, eta_in=timedelta(days=1))
        for _ in range(COUNT // CHUNK):
            with client.pipeline(transaction=False) as pipe:
                for _ in range(CHUNK):
                    pipe.lpush(shared.queue, next(envelopes))
                pipe.execute()
        published = time.monotonic() - started
        wait_for(
            lambda: client.zcard(delayed) == COUNT + 200,
            timeout=120,
            interval=0.5,
            what="every ETA message handed to the delayed set",
        )
        drained = time.monotonic() - started
        after = resident_bytes(worker)

        # All of them are in Redis, waiting; none in the list, none leased by the worker.
        assert client.llen(shared.queue) == 0
        assert client.hlen("unacked") == 0
        assert client.zcard("unacked_index") == 0
        growth = after - before
        print(
            f"\n{COUNT} ETA messages: pushed in {published:.1f} s, all deferred after "
            f"{drained:.1f} s; worker RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB"
        )
        # Holding them would take ~80 MB (their envelopes alone); allow noise only.
        assert growth < 8 * 2**20, growth
        # The worker still runs ordinary work at once.
        assert tasks.add.delay(20, 22).get(timeout=10) == 42
        assert_no_errors(worker.output())
    finally:
        client.close()
        tasks.app.close()
