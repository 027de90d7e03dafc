"""Shared Redis records follow the server's clock, not the host's: a host whose wall
clock is hours off (or stepped by NTP) neither has its running tasks stolen nor keeps
lapsed leases alive. The wall clock is stepped by replacing `time.time` in this process
(what a step of the system clock does to every reader of it).

Checks docs/reliability.md, "Wall clock stepped"."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis

from celeriac.brokers import create_broker
from celeriac.brokers.redis import RedisBroker
from celeriac.protocol.codec import TaskCall, encode_task
from tests.helpers import REDIS_URL, require_redis, unique, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = pytest.mark.redis

TWO_HOURS = 7200.0
REAL_TIME = time.time
REAL_MONOTONIC = time.monotonic


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis()
    value = unique("clk") + ":"
    yield value
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{value}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def make_broker(prefix: str) -> Iterator[Callable[..., RedisBroker]]:
    made: list[RedisBroker] = []

    def make(consumer: str, clock: Any = None, **options: Any) -> RedisBroker:
        broker = create_broker(
            REDIS_URL,
            transport_options={"global_keyprefix": prefix, **options},
            consumer_id=f"{prefix}{consumer}",
            clock=clock,
        )
        assert isinstance(broker, RedisBroker)
        broker.connect()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def step_wall_clock(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + seconds)


class RightClock:
    """Another host's clock, which is right (the real one, taken before any step)."""

    time = staticmethod(REAL_TIME)
    monotonic = staticmethod(REAL_MONOTONIC)


def test_a_lease_taken_with_a_clock_behind_is_not_stolen(
    make_broker: Callable[..., RedisBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = unique("q")
    holder = make_broker("holder", visibility_timeout=600)
    sweeper = make_broker("sweeper", visibility_timeout=600, clock=RightClock())
    holder.declare(queue)
    holder.publish(encode_task(TaskCall(name="t.x", id=str(uuid.uuid4()))), queue=queue)

    step_wall_clock(monkeypatch, -TWO_HOURS)
    (delivery,) = holder.receive([queue], limit=1, timeout=1.0)
    # Stamped with the host's clock, the lease would look 100 minutes lapsed to every
    # other host, and the running task would be handed out again.
    assert sweeper.restore_expired() == 0
    assert holder.size(queue) == 0
    holder.ack(delivery)


def test_a_lease_taken_with_a_clock_ahead_lapses_in_time(
    make_broker: Callable[..., RedisBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = unique("q")
    holder = make_broker("holder", visibility_timeout=1)
    sweeper = make_broker("sweeper", visibility_timeout=1, clock=RightClock())
    holder.declare(queue)
    holder.publish(encode_task(TaskCall(name="t.x", id=str(uuid.uuid4()))), queue=queue)

    step_wall_clock(monkeypatch, TWO_HOURS)
    (_delivery,) = holder.receive([queue], limit=1, timeout=1.0)
    # The holder never renews it (as if it died): its lease lapses after the visibility
    # timeout, not two hours later.
    wait_for(lambda: sweeper.restore_expired() == 1, timeout=30, what="the lease lapsing")
    assert holder.size(queue) == 1


def test_the_server_clock_is_read_once_per_period(
    make_broker: Callable[..., RedisBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = make_broker("reader")
    first = broker.clock.time()
    step_wall_clock(monkeypatch, -TWO_HOURS)
    # Carried forward on the monotonic clock: the step does not move it.
    assert 0 <= broker.clock.time() - first < 5
