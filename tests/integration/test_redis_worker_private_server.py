"""A celeriac worker process against a Redis server of the test's own: a crash and
restart of Redis mid-run, and the start-up warning about an evicting Redis.

Each test starts a private `redis-server` on a free loopback port with its own directory
(appendonly yes), restarts it when the test says so and stops it by pid.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from celeriac.exceptions import BrokerConnectionError
from tests.helpers import unique, wait_for
from tests.integration.conftest import RunWorker, import_tasks, write_tasks
from tests.integration.interop_redis import Shared, assert_no_errors
from tests.private_servers import PrivateRedis, require_redis_server

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.redis]

PUBLISHES = 600


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., PrivateRedis]]:
    """Start private servers with extra `redis-server` arguments; all stopped by pid."""
    require_redis_server()
    started: list[PrivateRedis] = []

    def start(*extra: str) -> PrivateRedis:
        directory = tmp_path / f"redis-{len(started)}"
        directory.mkdir()
        server = PrivateRedis(directory, *extra)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def crash_and_restart(server: PrivateRedis, *, down_for: float) -> None:
    """SIGKILL the server (no shutdown save), then start it again from its AOF."""
    assert server.process is not None
    server.process.kill()
    server.process.wait(timeout=10)
    server.process = None
    time.sleep(down_for)
    server.start()


@pytest.mark.slow
def test_a_redis_crash_loses_no_acknowledged_publish_and_the_worker_goes_on(
    private_redis: Callable[..., PrivateRedis], tasks_dir: Path, run_worker: RunWorker
) -> None:
    # Every write is on disk before Redis replies, so "acknowledged" means "durable".
    server = private_redis("--appendfsync", "always")
    shared = Shared(url=server.url, prefix="", queue=unique("rs"))
    write_tasks(tasks_dir, shared.celeriac_source())
    tasks: Any = import_tasks(tasks_dir)
    worker = run_worker("-c", "2")
    acknowledged: dict[int, Any] = {}
    refused: list[BaseException] = []

    def produce() -> None:
        for n in range(PUBLISHES):
            try:
                acknowledged[n] = tasks.add.delay(n, n)
            except BrokerConnectionError as exc:  # not acknowledged: may be lost
                refused.append(exc)
            time.sleep(0.003)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_for(lambda: len(acknowledged) >= PUBLISHES // 4, timeout=20, what="traffic")
        crash_and_restart(server, down_for=1.0)
        restarted_at = len(acknowledged) + len(refused)
        producer.join(60)
        assert not producer.is_alive()
        # The producer went on after the restart, and every task it was told was
        # published ran: its result is there (results are on the same Redis).
        assert restarted_at < PUBLISHES
        assert len(acknowledged) >= PUBLISHES - len(refused)
        assert len(refused) <= 5, refused
        missing = [n for n, r in acknowledged.items() if r.get(timeout=30) != 2 * n]
        assert missing == []
        # No silent stall: the same worker, untouched, keeps taking new work promptly.
        sent = time.monotonic()
        assert [tasks.add.delay(n, 1).get(timeout=10) for n in range(20)] == [
            n + 1 for n in range(20)
        ]
        assert time.monotonic() - sent < 10
        assert worker.process.poll() is None
        print(
            f"\n{len(acknowledged)} acknowledged publishes (restart after ~{restarted_at}),"
            f" {len(refused)} refused, all acknowledged ones ran"
        )
    finally:
        producer.join(60)
        tasks.app.close()


def test_an_evicting_redis_is_warned_about_at_worker_start(
    private_redis: Callable[..., PrivateRedis], tasks_dir: Path, run_worker: RunWorker
) -> None:
    server = private_redis("--maxmemory-policy", "allkeys-lru")
    write_tasks(tasks_dir, Shared(url=server.url, prefix="", queue="q").celeriac_source())
    worker = run_worker("-c", "1")
    [line] = [line for line in worker.output().splitlines() if "maxmemory-policy" in line]
    assert "WARNING" in line
    assert "'allkeys-lru'" in line
    assert "noeviction" in line


def test_a_noeviction_redis_gets_no_warning(
    private_redis: Callable[..., PrivateRedis], tasks_dir: Path, run_worker: RunWorker
) -> None:
    server = private_redis("--maxmemory-policy", "noeviction")
    write_tasks(tasks_dir, Shared(url=server.url, prefix="", queue="q").celeriac_source())
    worker = run_worker("-c", "1")
    assert "maxmemory-policy" not in worker.output()
    assert_no_errors(worker.output())


@pytest.mark.slow
def test_an_outage_longer_than_the_retry_budget_does_not_kill_the_children(
    private_redis: Callable[..., PrivateRedis], tasks_dir: Path, run_worker: RunWorker
) -> None:
    server = private_redis()
    shared = Shared(url=server.url, prefix="", queue=unique("rs"))
    # The broker gives up after one quick retry (~0.05 s): the outage outlasts it.
    write_tasks(tasks_dir, shared.celeriac_source(connection_retries=1))
    tasks: Any = import_tasks(tasks_dir)
    try:
        worker = run_worker("-c", "2")
        assert tasks.add.delay(1, 1).get(timeout=10) == 2
        children = set(worker.children())
        crash_and_restart(server, down_for=2.0)
        # The consumers wait for Redis and carry on; no child died or was replaced.
        assert tasks.add.delay(2, 2).get(timeout=15) == 4
        assert set(worker.children()) == children
        assert "died" not in worker.output()
    finally:
        tasks.app.close()
