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

from celeriac.protocol.codec import TaskCall, encode_task
from celeriac.worker.holdings import Holdings, Shutdown

if TYPE_CHECKING:
    from celeriac.brokers.base import Delivery
    from tests.contract.conftest import BrokerFactory

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("broker_factory", ["sqlite", "redis"], indirect=True)
def test_leaving_returns_what_the_fetch_under_way_leased(broker_factory: BrokerFactory) -> None:
    orphan, other = broker_factory("orphan"), broker_factory("other")
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
