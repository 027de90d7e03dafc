"""Redis tests that need a server of their own: restarts during traffic, server settings,
and checks that need an empty keyspace. Each test starts a private `redis-server` on a
free loopback port with its own directory and stops it by pid."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from celeriac import states
from celeriac._time import utcnow
from celeriac.backends.redis import RedisBackend
from celeriac.brokers.redis import RedisBroker
from celeriac.exceptions import BrokerConnectionError
from celeriac.protocol.codec import TaskCall, decode_task, encode_task
from tests.helpers import require_programs, wait_for
from tests.private_servers import PrivateRedis, require_redis_server

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from celeriac.brokers.base import Delivery

pytestmark = [pytest.mark.redis, pytest.mark.integration]

ACCEPT = frozenset({"application/json"})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    require_redis_server()
    private = PrivateRedis(tmp_path)
    try:
        private.start()
        yield private
    finally:
        private.stop()


def make_message(n: int) -> TaskCall:
    return TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[n])


@pytest.mark.slow
def test_a_restart_loses_no_acknowledged_publish_and_consumers_resume(
    server: PrivateRedis,
) -> None:
    options = {"connection_retries": 30, "connection_retry_backoff_max": 0.2}
    producer = RedisBroker(server.url, transport_options=options, consumer_id="producer")
    consumer = RedisBroker(server.url, transport_options=options, consumer_id="consumer")
    published: list[int] = []
    received: dict[int, Delivery] = {}
    errors: list[Exception] = []
    stop = threading.Event()

    def produce() -> None:
        n = 0
        while not stop.is_set() and n < 400:
            try:
                producer.publish(encode_task(make_message(n)), queue="q")
            except BrokerConnectionError as exc:  # not acknowledged: may be lost
                errors.append(exc)
            else:
                published.append(n)
            n += 1
            time.sleep(0.005)

    def consume() -> None:
        while not stop.is_set():
            try:
                batch = consumer.receive(["q"], limit=10, timeout=0.2)
                for delivery in batch:
                    received[decode_task(delivery.message, accept=ACCEPT).args[0]] = delivery
                consumer.ack_many(batch)
            except BrokerConnectionError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(published) > 100, timeout=20)
        server.restart(pause=0.3)
        wait_for(lambda: len(published) >= 400 or errors, timeout=60)
        assert not errors
        wait_for(lambda: set(published) <= set(received), timeout=30, what="every publish")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        producer.close()
        consumer.close()
    assert len(published) == 400


def test_a_consumer_resumes_by_itself_after_an_outage(server: PrivateRedis) -> None:
    options = {"connection_retries": 1, "connection_retry_backoff": 0.01}
    broker = RedisBroker(server.url, transport_options=options, consumer_id="c")
    broker.receive(["q"], limit=1, timeout=0.05)
    server.stop()
    with pytest.raises(BrokerConnectionError):
        broker.receive(["q"], limit=1, timeout=0.05)
    server.start()
    broker.publish(encode_task(make_message(1)), queue="q")
    got = broker.receive(["q"], limit=1, timeout=5)
    assert [decode_task(d.message, accept=ACCEPT).args[0] for d in got] == [1]
    broker.close()


def test_a_restart_during_a_blocking_wait_still_wakes_the_consumer(server: PrivateRedis) -> None:
    broker = RedisBroker(server.url, consumer_id="c")
    producer = RedisBroker(server.url, consumer_id="p")
    broker.receive(["q"], limit=1, timeout=0)
    got: list[Delivery] = []
    waiter = threading.Thread(target=lambda: got.extend(broker.receive(["q"], limit=1, timeout=20)))
    waiter.start()
    time.sleep(0.2)
    server.restart()
    producer.publish(encode_task(make_message(3)), queue="q")
    waiter.join(25)
    assert len(got) == 1
    broker.close()
    producer.close()


def test_results_survive_a_restart_and_waiters_resubscribe(server: PrivateRedis) -> None:
    backend = RedisBackend(server.url)
    writer = RedisBackend(server.url)
    task_id = str(uuid.uuid4())
    done: list[object] = []
    waiter = threading.Thread(target=lambda: done.append(backend.wait(task_id, timeout=30)))
    waiter.start()
    time.sleep(0.2)
    server.stop()
    time.sleep(0.3)
    server.start()
    writer.store(writer.ready_meta(task_id, states.SUCCESS, 5))
    waiter.join(35)
    [meta] = done
    assert meta.result == 5  # type: ignore[attr-defined]
    backend.close()
    writer.close()


def test_every_key_we_write_carries_the_global_prefix(server: PrivateRedis) -> None:
    prefix = "app1:"
    broker = RedisBroker(
        server.url, transport_options={"global_keyprefix": prefix}, consumer_id="c"
    )
    backend = RedisBackend(server.url, transport_options={"global_keyprefix": "app1"})
    broker.declare("q")
    broker.publish(encode_task(make_message(1)), queue="q", priority=5)
    broker.publish(encode_task(make_message(2)), queue="q", eta=utcnow() + timedelta(hours=1))
    broker.publish(encode_task(make_message(3)), queue="q")
    [first, second] = broker.receive(["q"], limit=2, timeout=2)
    broker.dead_letter(first, reason="x")
    broker.extend([second], seconds=60)
    broker.reserve_rate_slot("k", interval=1.0)
    broker.restore_expired()
    backend.store(backend.ready_meta("t1", states.SUCCESS, 1))
    backend.save_group("g1", [["g1", None], []])
    backend.set_chord_size("g2", 2)
    backend.chord_part_return("g2", index=0, task_id="t2", status=states.SUCCESS, result=1)
    client = server.client()
    keys = [key.decode() for key in client.scan_iter(count=1000)]
    client.close()
    assert len(keys) > 10
    assert [key for key in keys if not key.startswith(("app1:", "app1_"))] == []
    assert "app1_celery-task-meta-t1" in keys
    broker.close()
    backend.close()


def test_eviction_warning_names_a_dangerous_policy(tmp_path: Path) -> None:
    require_redis_server()
    private = PrivateRedis(tmp_path, "--maxmemory-policy", "allkeys-lru")
    try:
        private.start()
        broker = RedisBroker(private.url)
        warning = broker.eviction_warning()
        assert warning is not None
        assert "allkeys-lru" in warning
        assert "noeviction" in warning
        client = private.client()
        client.config_set("maxmemory-policy", "noeviction")
        client.close()
        assert broker.eviction_warning() is None
        broker.close()
    finally:
        private.stop()


def _make_certificates(directory: Path) -> None:
    """A throw-away CA and a server certificate for 127.0.0.1, valid for a day."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=celeriac-test-ca",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    )


def test_rediss_with_a_verified_certificate(tmp_path: Path) -> None:
    require_programs("redis-server", "openssl")
    tls = tmp_path / "tls"
    tls.mkdir()
    _make_certificates(tls)
    private = PrivateRedis(tmp_path, tls=tls)
    try:
        private.start()
        url = f"{private.url}?ssl_cert_reqs=required&ssl_ca_certs={tls / 'ca.crt'}"
        consumer = RedisBroker(url, consumer_id="c")
        producer = RedisBroker(
            url, transport_options={"ssl": {"ssl_ca_certs": str(tls / "ca.crt")}}
        )
        consumer.receive(["q"], limit=1, timeout=0)
        timer = threading.Timer(
            0.3, lambda: producer.publish(encode_task(make_message(1)), queue="q")
        )
        timer.start()
        started = time.monotonic()
        got = consumer.receive(["q"], limit=1, timeout=10)
        timer.join()
        assert len(got) == 1
        assert time.monotonic() - started < 1.5
        assert consumer._watcher is not None  # woken over TLS, not by polling
        backend = RedisBackend(url)
        backend.store(backend.ready_meta("t", states.SUCCESS, 1))
        assert backend.wait("t", timeout=5).result == 1
        unverified = RedisBroker(
            private.url, transport_options={"connection_retries": 0}, consumer_id="x"
        )
        with pytest.raises(BrokerConnectionError):
            unverified.connect()
        for closable in (consumer, producer, backend, unverified):
            closable.close()
    finally:
        private.stop()


def test_unix_socket_url(tmp_path: Path) -> None:
    require_redis_server()
    private = PrivateRedis(tmp_path, unix=True)
    try:
        private.start()
        broker = RedisBroker(private.url, consumer_id="c")
        broker.publish(encode_task(make_message(4)), queue="q")
        got = broker.receive(["q"], limit=1, timeout=5)
        assert [decode_task(d.message, accept=ACCEPT).args[0] for d in got] == [4]
        broker.close()
    finally:
        private.stop()
