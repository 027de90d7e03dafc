"""The Redis broker's URL schemes, Celery's priority order and kombu's priority lists.
No server: nothing here opens a connection."""

from __future__ import annotations

import pytest

from celeriac.backends import create_backend
from celeriac.backends.redis import RedisBackend
from celeriac.brokers import create_broker
from celeriac.brokers.redis import RedisBroker
from celeriac.brokers.redis.keys import Keys


def test_every_redis_scheme_maps_to_our_classes() -> None:
    for url in ("redis://h/0", "rediss://h/0", "redis+socket:///tmp/r.sock"):
        assert isinstance(create_broker(url), RedisBroker)
        assert isinstance(create_backend(url), RedisBackend)


def test_broker_declares_celerys_redis_priority_order() -> None:
    broker = RedisBroker("redis://:pw@h/0")
    assert broker.higher_priority_first is False
    assert broker.visibility_timeout == 3600
    assert broker.safe_url() == "redis://:***@h/0"


@pytest.mark.parametrize(
    ("steps", "priority", "key"),
    [
        ((0, 3, 6, 9), 0, "q"),
        ((0, 3, 6, 9), 2, "q"),
        ((0, 3, 6, 9), 5, "q\x06\x163"),
        ((0, 3, 6, 9), 8, "q\x06\x166"),
        ((0, 3, 6, 9), 9, "q\x06\x169"),
        ((0, 3, 6, 9), 42, "q\x06\x169"),
        # kombu's bisect wraps a priority below the first step to the last step.
        ((1, 5, 9), 0, "q\x06\x169"),
    ],
)
def test_priority_lists_match_kombu(steps: tuple[int, ...], priority: int, key: str) -> None:
    assert Keys({"priority_steps": steps}, "c1").list_key("q", priority) == key
    broker = RedisBroker("redis://h/0", transport_options={"priority_steps": steps})
    assert broker._keys.list_key("q", priority) == key
