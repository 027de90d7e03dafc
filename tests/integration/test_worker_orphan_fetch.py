"""An orphaned process returns what it holds, including what a fetch under way leases it.

A prefork child whose supervisor died returns its messages and exits. Its consuming
thread may be inside a fetch at that moment; a message that fetch leases after the
return had read the child's leases would wait out the whole visibility timeout (CI saw
the other orphan's returned message fetched so). `Holdings.leave` waits for the fetch.
"""

from __future__ import annotations

import threading
import uuid
from typing import TYPE_CHECKING

import pytest

from celeriac.brokers import create_broker
from celeriac.protocol.codec import TaskCall, encode_task
from celeriac.worker.consumer import Holdings, Shutdown
from tests.helpers import REDIS_URL, require_redis, unique

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from celeriac.brokers.base import Broker, Delivery

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def make_broker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str], Broker]]:
    made: list[Broker] = []
    prefix = unique("orphan") + ":"
    if request.param == "redis":
        require_redis()
        url = REDIS_URL
        options = {"global_keyprefix": prefix}
    else:
        url = f"sqlite:///{tmp_path / 'broker.db'}"
        options = {}

    def make(consumer: str) -> Broker:
        broker = create_broker(url, transport_options=options, consumer_id=prefix + consumer)
        broker.connect()
        made.append(broker)
        return broker

    yield make
    if request.param == "redis":
        made[0].purge("q")
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    for broker in made:
        broker.close()


def test_leaving_returns_what_the_fetch_under_way_leased(
    make_broker: Callable[[str], Broker],
) -> None:
    orphan, other = make_broker("orphan"), make_broker("other")
    holdings = Holdings(orphan, Shutdown(), window=4)
    fetched: list[Delivery] = []
    fetching = threading.Event()

    def receive() -> list[Delivery]:
        fetching.set()
        return orphan.receive(["q"], limit=4, timeout=5.0)

    consumer = threading.Thread(target=lambda: fetched.extend(holdings.fetch(receive)))
    consumer.start()
    assert fetching.wait(5.0)
    leaving = threading.Thread(target=holdings.leave)
    leaving.start()
    leaving.join(0.3)
    assert leaving.is_alive(), "leave must wait for the fetch under way"
    call = TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[1])
    other.publish(encode_task(call), queue="q")
    consumer.join(10)
    leaving.join(10)

    assert [d.message.headers["id"] for d in fetched] == [call.id]  # leased to the orphan...
    taken = other.receive(["q"], limit=4, timeout=5.0)  # ...and returned at once
    assert [d.message.headers["id"] for d in taken] == [call.id]
    assert holdings.fetch(lambda: pytest.fail("fetched after leaving")) == []
