"""TLS to Redis and RabbitMQ: certificates and host names checked by default, Celery's
`broker_use_ssl` / `redis_backend_use_ssl` settings honoured, secrets never printed.

Each test makes a throwaway CA and starts its own TLS listener on loopback: a private
`redis-server --tls-port`, and a private RabbitMQ node whose certificate names only
`localhost` (so that `127.0.0.1` is a name it does not match). Both are stopped by pid.
"""

from __future__ import annotations

import ssl
import uuid
from typing import TYPE_CHECKING

import pytest

from celeriac import Celeriac
from celeriac.backends.redis import RedisBackend
from celeriac.brokers.amqp.broker import AMQPBroker
from celeriac.brokers.redis import RedisBroker
from celeriac.exceptions import BackendError, BrokerConnectionError
from celeriac.protocol.codec import TaskCall, encode_task
from celeriac.testing import start_worker
from tests.helpers import require_programs, unique
from tests.private_servers import (
    Node,
    PrivateRedis,
    free_port,
    make_test_ca,
    require_rabbitmq_server,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from celeriac.protocol.message import Message

pytestmark = [pytest.mark.integration]


def make_message(n: int) -> Message:
    return encode_task(TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[n]))


# -- Redis ----------------------------------------------------------------------------------


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[PrivateRedis, Path]]:
    """A redis-server speaking only TLS, with a certificate for 127.0.0.1 alone, that
    wants a client certificate signed by the same CA."""
    require_programs("redis-server", "openssl")
    tls = tmp_path / "tls"
    make_test_ca(tls, names="IP:127.0.0.1")
    server = PrivateRedis(tmp_path, tls=tls, client_certificates=True)
    try:
        server.start()
        yield server, tls
    finally:
        server.stop()


def celery_redis_ssl(tls: Path) -> dict[str, object]:
    """Celery's `broker_use_ssl` / `redis_backend_use_ssl` for a Redis server."""
    return {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": str(tls / "ca.crt"),
        "ssl_certfile": str(tls / "client.crt"),
        "ssl_keyfile": str(tls / "client.key"),
    }


@pytest.mark.redis
def test_celery_tls_settings_carry_a_task_and_its_result_over_rediss(
    tls_redis: tuple[PrivateRedis, Path],
) -> None:
    server, tls = tls_redis
    app = Celeriac(
        "tls",
        broker=server.url,
        backend=server.url.replace("/0", "/1"),
        broker_use_ssl=celery_redis_ssl(tls),
        redis_backend_use_ssl=celery_redis_ssl(tls),
    )

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    try:
        with start_worker(app):
            assert add.delay(2, 3).get(timeout=20) == 5
    finally:
        app.close()


@pytest.mark.redis
def test_rediss_refuses_a_certificate_for_another_host_name(
    tls_redis: tuple[PrivateRedis, Path],
) -> None:
    server, tls = tls_redis
    # The certificate is for 127.0.0.1; "localhost" reaches the same server but is not
    # a name the certificate vouches for.
    url = f"rediss://localhost:{server.port}/0"
    options = {"ssl": celery_redis_ssl(tls)}
    broker = RedisBroker(url, transport_options=options, consumer_id="c")
    try:
        # At once: no retry can fix a certificate (retries would take about 6 s).
        with pytest.raises(BrokerConnectionError, match=r"TLS handshake.*Hostname mismatch"):
            broker.connect()
    finally:
        broker.close()
    # The same settings with the certificate's own name work.
    good = RedisBroker(server.url, transport_options=options, consumer_id="c")
    try:
        good.connect()
        good.publish(make_message(1), queue="q")
        assert good.size("q") == 1
    finally:
        good.close()


@pytest.mark.redis
def test_rediss_without_the_client_certificate_is_refused(
    tls_redis: tuple[PrivateRedis, Path],
) -> None:
    server, tls = tls_redis
    options = {"ssl": {"ssl_ca_certs": str(tls / "ca.crt")}}
    backend = RedisBackend(server.url, transport_options=options)
    try:
        with pytest.raises(BackendError, match=r"TLS handshake.*CERTIFICATE_REQUIRED"):
            backend.get("anything")
    finally:
        backend.close()


# -- RabbitMQ -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def localhost_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A private RabbitMQ node whose TLS certificate names `localhost` only."""
    require_rabbitmq_server()
    started = Node(tmp_path_factory.mktemp("rabbit-tls"), certificate_names="DNS:localhost")
    try:
        started.make_certificates()
        started.start()
        yield started
    finally:
        started.kill()


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_celery_broker_use_ssl_carries_tasks_over_amqps(localhost_node: Node) -> None:
    node = localhost_node
    app = Celeriac(
        "tls",
        broker=f"amqps://guest:guest@localhost:{node.tls_port}//",
        backend="memory://tls-amqps",
        broker_use_ssl={"ca_certs": str(node.ca_file), "cert_reqs": ssl.CERT_REQUIRED},
    )
    queue = unique("tls")

    @app.task(queue=queue)
    def double(x: int) -> int:
        return 2 * x

    try:
        with start_worker(app, queues=[queue]):
            assert double.delay(21).get(timeout=30) == 42
    finally:
        app.close()


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_amqps_checks_the_host_name_of_every_failover_host(localhost_node: Node) -> None:
    node = localhost_node
    dead = free_port()
    options = {"ssl": {"ca_certs": str(node.ca_file)}, "publish_retry_timeout": 30}
    # The first host is down, the second is the node under a name its certificate does
    # not carry: the connection must fail on the certificate, not connect.
    mismatch = (
        f"amqps://guest:guest@localhost:{dead}//;amqps://guest:guest@127.0.0.1:{node.tls_port}//"
    )
    broker = AMQPBroker(mismatch, transport_options=options)
    try:
        with pytest.raises(BrokerConnectionError, match="did not verify"):
            broker.connect()
    finally:
        broker.close()
    # The same list with the certificate's own name fails over and carries a message.
    matching = (
        f"amqps://guest:guest@localhost:{dead}//;amqps://guest:guest@localhost:{node.tls_port}//"
    )
    queue = unique("failover")
    good = AMQPBroker(matching, transport_options=options)
    try:
        good.publish(make_message(7), queue=queue)
        [delivery] = good.receive([queue], limit=1, timeout=10)
        good.ack(delivery)
    finally:
        good.close()
