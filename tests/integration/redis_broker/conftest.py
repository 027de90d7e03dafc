"""Fixtures of the Redis broker tests: a client of the shared Redis, a key prefix of the
test's own (its keys deleted afterwards), and brokers under it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import redis

from celeriac.brokers import create_broker
from celeriac.brokers.redis import RedisBroker
from tests.helpers import REDIS_URL, require_redis, unique

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    require_redis()
    connection = redis.Redis.from_url(REDIS_URL)
    yield connection
    connection.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    value = unique("rb") + ":"
    yield value
    keys = list(client.scan_iter(match=f"{value}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


@pytest.fixture
def make_broker(prefix: str) -> Iterator[Callable[..., RedisBroker]]:
    made: list[RedisBroker] = []

    def make(consumer: str = "c1", **options: Any) -> RedisBroker:
        broker = create_broker(
            REDIS_URL,
            transport_options={"global_keyprefix": prefix, **options},
            consumer_id=f"{prefix}{consumer}",
        )
        assert isinstance(broker, RedisBroker)
        broker.connect()
        # A consumer, present as a worker's is: ETA messages wait broker-side (with no
        # celeriac consumer alive they would go to their list; see the tests below).
        broker.heartbeat({"worker": "w@h"}, held=0, running=[], register=True)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()
