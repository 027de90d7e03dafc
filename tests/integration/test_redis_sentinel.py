"""Redis behind Sentinel (`sentinel://` URLs, kombu's form and options) for the broker
and the result backend, a failover in the middle of a run, and the start-up warning
about a Redis without an append-only file.

Each test starts its own servers on free loopback ports: a master, a replica and three
sentinels (`redis-server --sentinel`), all stopped by pid.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis

from celeriac import states
from celeriac.backends.redis import RedisBackend
from celeriac.brokers.redis import RedisBroker
from celeriac.exceptions import ImproperlyConfigured
from tests.helpers import REDIS_URL, require_redis, unique, wait_for
from tests.integration.conftest import RunWorker, import_tasks, write_tasks
from tests.private_servers import PrivateRedis, free_port, require_redis_server

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.redis]

MASTER_NAME = "celeriac-test"


class SentinelProcess:
    """One `redis-server --sentinel` on a free loopback port watching `master_port`."""

    def __init__(self, directory: Path, master_port: int) -> None:
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {directory}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Group:
    """A master, a replica and three sentinels."""

    def __init__(self, directory: Path) -> None:
        self.master = PrivateRedis(directory / "master")
        self.replica = PrivateRedis(
            directory / "replica", "--replicaof", "127.0.0.1", str(self.master.port)
        )
        self.sentinels = [
            SentinelProcess(directory / f"sentinel-{n}", self.master.port) for n in range(3)
        ]

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{s.port}/0" for s in self.sentinels)

    def start(self) -> None:
        for server in (self.master, self.replica):
            server.directory.mkdir(parents=True, exist_ok=True)
            server.start()
        replica = self.replica.client()
        try:
            wait_for(
                lambda: replica.info("replication").get("master_link_status") == "up",
                timeout=20,
                what="the replica to sync",
            )
        finally:
            replica.close()
        for sentinel in self.sentinels:
            sentinel.start()
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                wait_for(
                    lambda client=client: _sees_everybody(client),  # type: ignore[misc]
                    timeout=30,
                    what="each sentinel to see the replica and the other two",
                )
            finally:
                client.close()

    def master_port(self) -> int:
        client = self.sentinels[-1].client()
        try:
            address: Any = client.sentinel_get_master_addr_by_name(MASTER_NAME)
            return int(address[1])
        finally:
            client.close()

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.stop()
        self.master.stop()


def _sees_everybody(client: redis.Redis) -> bool:
    with contextlib.suppress(redis.RedisError):
        sentinels: Any = client.sentinel_sentinels(MASTER_NAME)
        replicas: Any = client.sentinel_slaves(MASTER_NAME)
        return len(sentinels) == 2 and len(replicas) == 1
    return False


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Group]:
    require_redis_server()
    started = Group(tmp_path)
    try:
        started.start()
        yield started
    finally:
        started.stop()


def test_a_sentinel_url_needs_a_master_name() -> None:
    broker = RedisBroker("sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380")
    with pytest.raises(ImproperlyConfigured, match="master_name"):
        broker.connect()


def test_broker_and_backend_find_the_master_through_the_sentinels(group: Group) -> None:
    options = {"master_name": MASTER_NAME}
    broker = RedisBroker(group.url, transport_options=options, consumer_id="c")
    backend = RedisBackend(group.url, transport_options=options)
    try:
        broker.publish(_message(1), queue="q")
        [delivery] = broker.receive(["q"], limit=1, timeout=5)
        broker.ack(delivery)
        backend.store(backend.ready_meta("t1", states.SUCCESS, 41))
        master = group.master.client()
        try:
            assert master.exists(b"celery-task-meta-t1")
        finally:
            master.close()
    finally:
        broker.close()
        backend.close()


def _message(n: int) -> Any:
    import uuid

    from celeriac.protocol.codec import TaskCall, encode_task

    return encode_task(TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[n]))


TASKS = """
import redis
from celeriac import Celeriac

OPTIONS = {{
    "master_name": {master!r},
    "replicas_to_confirm": 1,
    "connection_retries": 40,
}}
app = Celeriac(
    "ha",
    broker={url!r},
    backend={url!r},
    broker_transport_options=OPTIONS,
    result_backend_transport_options=OPTIONS,
    task_default_queue="ha",
)


@app.task(name="ha.record")
def record(n):
    # Recorded outside the failing-over servers: the ground truth of what ran.
    client = redis.Redis.from_url({ledger!r})
    client.sadd({key!r}, n)
    client.close()
    return n
"""


@pytest.mark.slow
def test_a_failover_mid_run_loses_no_confirmed_task(
    group: Group, tasks_dir: Path, run_worker: RunWorker
) -> None:
    require_redis()
    key = unique("ha-ran")
    write_tasks(
        tasks_dir,
        TASKS.format(master=MASTER_NAME, url=group.url, ledger=REDIS_URL, key=key),
    )
    tasks: Any = import_tasks(tasks_dir)
    run_worker("-c", "2")
    confirmed: list[int] = []
    refused: list[int] = []
    stop = threading.Event()
    confirmed_at: list[float] = []

    def produce() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                tasks.record.delay(n)
            except Exception:  # a refused publish is allowed; it is not "confirmed"
                refused.append(n)
            else:
                confirmed.append(n)
                confirmed_at.append(time.monotonic())
            time.sleep(0.005)

    ledger = redis.Redis.from_url(REDIS_URL)
    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_for(lambda: len(confirmed) >= 200, timeout=30, what="traffic before the failover")
        old_port = group.master.port
        killed_at = time.monotonic()
        crashed, group.master.process = group.master.process, None
        assert crashed is not None
        crashed.kill()  # a crash: SIGKILL, no goodbye
        crashed.wait(timeout=10)
        wait_for(lambda: group.master_port() != old_port, timeout=30, what="the failover")
        promoted_at = time.monotonic()
        wait_for(
            lambda: confirmed_at and confirmed_at[-1] > promoted_at,
            timeout=30,
            what="a publish to the new master",
        )
        resumed_at = next(at for at in confirmed_at if at > killed_at)
        # The crashed node comes back (from its AOF) and the sentinels make it a replica
        # of the new master, so publishes are confirmed by a replica again.
        group.master.start()
        wait_for(lambda: len(confirmed) >= 400, timeout=60, what="traffic after the failover")
        stop.set()
        producer.join(60)
        expected = set(confirmed)
        wait_for(
            lambda: {int(n) for n in ledger.smembers(key)} >= expected,
            timeout=120,
            what="every confirmed task to run",
        )
        print(
            f"\nfailover: promoted {promoted_at - killed_at:.1f} s after the kill, first "
            f"publish confirmed {resumed_at - killed_at:.1f} s after it; {len(confirmed)} "
            f"confirmed, {len(refused)} refused, all confirmed ones ran"
        )
    finally:
        stop.set()
        producer.join(60)
        ledger.delete(key)
        ledger.close()
        tasks.app.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Any]:
    require_redis_server()
    started: list[PrivateRedis] = []

    def start(*extra: str) -> PrivateRedis:
        server = PrivateRedis(tmp_path / f"r{len(started)}", *extra)
        server.directory.mkdir()
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


def test_a_redis_without_aof_is_warned_about_at_start(private_redis: Any) -> None:
    without = private_redis("--appendonly", "no")
    broker = RedisBroker(without.url)
    try:
        [warning] = [w for w in broker.startup_warnings() if "append-only" in w]
        assert "appendonly yes" in warning
    finally:
        broker.close()
    with_aof = private_redis()  # PrivateRedis runs with --appendonly yes
    broker = RedisBroker(with_aof.url)
    try:
        assert not [w for w in broker.startup_warnings() if "append-only" in w]
    finally:
        broker.close()


def test_every_kind_of_publish_waits_for_its_replicas(
    private_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from datetime import timedelta

    from celeriac._time import utcnow
    from celeriac.brokers.base import Outgoing

    # A master whose replica is gone: WAIT can only time out, and says so.
    alone = private_redis()
    options = {"replicas_to_confirm": 1, "replica_confirm_timeout": 0.2}
    broker = RedisBroker(alone.url, transport_options=options)
    try:
        kinds: dict[str, Callable[[], None]] = {
            "immediate": lambda: broker.publish(_message(1), queue="q"),
            "eta": lambda: broker.publish(
                _message(2), queue="q", eta=utcnow() + timedelta(minutes=5)
            ),
            "batch": lambda: broker.publish_many(
                [Outgoing(_message(n), queue="q") for n in (3, 4)]
            ),
        }
        for kind, publish in kinds.items():
            caplog.clear()
            broker._unreplicated_warned_at = float("-inf")  # one warning per kind
            with caplog.at_level("WARNING", logger="celeriac.brokers.redis.broker"):
                publish()
            assert "0 of 1 replicas confirmed" in caplog.text, kind
        client = alone.client()
        try:
            # Published all the same. No celeriac consumer is present, so the ETA one
            # went to the list as kombu publishes it (broker_side_eta "auto").
            assert client.llen("q") == 4
            assert client.zcard(broker._keys.delayed("q")) == 0
        finally:
            client.close()
    finally:
        broker.close()
