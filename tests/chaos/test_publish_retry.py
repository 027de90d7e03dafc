"""A Redis publish retried after a lost reply lands once.

The producer reaches the shared Redis through `tests/chaos/proxy.py`, which forwards the
publish to the server and then drops the server's reply, resetting the connection: the
server ran the command, the producer never heard so, and its retry loop sends it again
on a new connection. The publish token (src/celeriac/brokers/redis/publish_token.py)
makes that retry push nothing: each message is in its list once.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
import redis

from celeriac.brokers.base import Outgoing
from celeriac.brokers.redis import RedisBroker
from celeriac.protocol.codec import TaskCall, encode_task
from tests.chaos.proxy import FaultProxy
from tests.helpers import require_redis, unique
from tests.integration.test_amqp_worker import delete_redis_keys

if TYPE_CHECKING:
    from collections.abc import Iterator

    from celeriac.protocol.message import Message

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(60)]


def make_message(n: int) -> Message:
    return encode_task(TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[n]))


@pytest.fixture
def proxied() -> Iterator[tuple[RedisBroker, FaultProxy, redis.Redis, str]]:
    """A broker reaching Redis through a fault proxy, a direct client, and its prefix."""
    url = require_redis()
    parts = urlsplit(url)
    proxy = FaultProxy(parts.port or 6379)
    prefix = unique("pubretry") + "."
    database = parts.path.strip("/") or "0"
    broker = RedisBroker(
        f"redis://127.0.0.1:{proxy.port}/{database}",
        transport_options={"global_keyprefix": prefix, "broker_side_eta": False},
    )
    direct = redis.Redis.from_url(url)
    try:
        yield broker, proxy, direct, prefix
    finally:
        broker.close()
        proxy.stop()
        delete_redis_keys(url, prefix)
        direct.close()


def ids_in(direct: redis.Redis, key: str) -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in direct.lrange(key, 0, -1)]


def test_a_publish_whose_reply_is_lost_is_in_the_queue_once(proxied) -> None:
    broker, proxy, direct, prefix = proxied
    first, second = make_message(1), make_message(2)
    broker.publish(first, queue="q")  # connects (the handshake's replies pass)
    proxy.lose_replies(1)
    broker.publish(second, queue="q")
    assert proxy.lost_replies == 1
    ids = ids_in(direct, prefix + "q")
    assert sorted(ids) == sorted([first.headers["id"], second.headers["id"]])


def test_a_batch_whose_reply_is_lost_is_in_the_queue_once(proxied) -> None:
    broker, proxy, direct, prefix = proxied
    broker.publish_many([Outgoing(make_message(0), queue="q")])  # connects
    batch = [make_message(n) for n in range(1, 6)]
    proxy.lose_replies(1)
    broker.publish_many([Outgoing(message, queue="q") for message in batch])
    assert proxy.lost_replies == 1
    ids = ids_in(direct, prefix + "q")
    assert len(ids) == 6
    assert set(ids) >= {message.headers["id"] for message in batch}
