"""A consuming process's presence record, kept through its `Holdings`, on the memory
broker with a fake clock: registered with its identity, listing what runs, reaping a
silent consumer, noticing it was reaped itself, and withdrawn on a clean exit."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import pytest

from celeriac._time import FakeClock
from celeriac.brokers.memory import MemoryBroker
from celeriac.protocol.codec import TaskCall, encode_task
from celeriac.worker.holdings import Holdings, Shutdown

if TYPE_CHECKING:
    from collections.abc import Iterator

    from celeriac.brokers.base import Delivery

LOST_AFTER = 30.0


@pytest.fixture
def url() -> Iterator[str]:
    name = f"memory://presence-{uuid.uuid4().hex}"
    yield name
    MemoryBroker.reset(name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def broker(url: str, clock: FakeClock, consumer_id: str) -> MemoryBroker:
    return MemoryBroker(
        url,
        consumer_id=consumer_id,
        clock=clock,
        transport_options={"worker_lost_after": LOST_AFTER},
    )


def holdings(consumer: MemoryBroker) -> Holdings:
    return Holdings(consumer, Shutdown(), window=8, worker="w1@box", pool="threads", concurrency=4)


def fetch(consumer: MemoryBroker, count: int) -> list[Delivery]:
    for _ in range(count):
        call = TaskCall(name="tests.add", id=str(uuid.uuid4()), args=[1, 2])
        consumer.publish(encode_task(call), queue="celery")
    return consumer.receive(["celery"], limit=count, timeout=0.1)


def test_the_record_carries_the_identity_and_what_runs(url: str, clock: FakeClock) -> None:
    consumer = broker(url, clock, "w1@box:100")
    held = holdings(consumer)
    assert held.presence is not None
    held.presence.beat()
    deliveries = fetch(consumer, 3)
    held.hold(deliveries)
    assert held.claim(deliveries[0])
    held.starting(deliveries[0])
    # Claimed but waiting for a pool thread: not running yet.
    assert held.claim(deliveries[1])
    held.presence.beat()
    [record] = consumer.consumers()
    assert (record.worker, record.pool, record.concurrency) == ("w1@box", "threads", 4)
    assert record.held == 3
    assert record.running == (deliveries[0].tag,)
    held.park(deliveries[0])
    held.presence.beat()
    [record] = consumer.consumers()
    assert record.running == ()
    assert record.held == 3  # parked: finished, its ack not sent yet


def test_a_live_consumer_reaps_a_silent_one_counting_a_crash_on_what_ran(
    url: str, clock: FakeClock
) -> None:
    dead = broker(url, clock, "dead:1")
    dead_held = holdings(dead)
    assert dead_held.presence is not None
    deliveries = fetch(dead, 3)
    dead_held.hold(deliveries)
    dead_held.claim(deliveries[0])
    dead_held.starting(deliveries[0])
    dead_held.presence.beat()
    alive = broker(url, clock, "alive:2")
    alive_held = holdings(alive)
    assert alive_held.presence is not None
    clock.advance(LOST_AFTER + 1)
    alive_held.presence.beat()
    assert alive_held.presence.reap() == 3
    back = alive.receive(["celery"], limit=10, timeout=0.1)
    assert {d.tag: d.crashes for d in back} == {
        deliveries[0].tag: 1,
        deliveries[1].tag: 0,
        deliveries[2].tag: 0,
    }
    assert [r.consumer_id for r in alive.consumers()] == ["alive:2"]


def test_a_consumer_that_was_reaped_forgets_what_it_had_not_started_and_registers_again(
    url: str, clock: FakeClock
) -> None:
    slow = broker(url, clock, "slow:1")
    held = holdings(slow)
    assert held.presence is not None
    held.presence.beat()
    deliveries = fetch(slow, 2)
    held.hold(deliveries)
    held.claim(deliveries[0])
    held.starting(deliveries[0])
    clock.advance(LOST_AFTER + 1)
    broker(url, clock, "reaper:2").reap()
    held.presence.beat()
    assert held.count() == 1  # the running one stays; the other went back to the queue
    assert not held.claim(deliveries[1])
    assert [r.consumer_id for r in slow.consumers()] == ["slow:1"]


def test_a_redelivered_message_is_listed_running_before_it_starts(
    url: str, clock: FakeClock
) -> None:
    consumer = broker(url, clock, "w:1")
    held = holdings(consumer)
    assert held.presence is not None
    held.presence.beat()
    [first] = fetch(consumer, 1)
    consumer.reject(first, requeue=True)
    [again] = consumer.receive(["celery"], limit=1, timeout=0.1)
    assert again.redelivered
    held.hold([again])
    held.claim(again)
    held.starting(again)  # no heartbeat in between: the mark went out here
    [record] = consumer.consumers()
    assert record.running == (again.tag,)


def test_a_clean_exit_withdraws_the_record_unless_messages_are_still_held(
    url: str, clock: FakeClock
) -> None:
    done = broker(url, clock, "done:1")
    done_held = holdings(done)
    done_held.start()
    done_held.stop()
    stuck = broker(url, clock, "stuck:2")
    stuck_held = holdings(stuck)
    stuck_held.start()
    stuck_held.hold(fetch(stuck, 1))
    stuck_held.stop()
    assert [r.consumer_id for r in done.consumers()] == ["stuck:2"]


def test_a_consumer_reaps_only_once_it_has_been_present_for_worker_lost_after(
    url: str,
) -> None:
    # After a broker outage every record is old: the first consumer back must wait as
    # long as the others had to refresh theirs. Real time, 0.3 s.
    options = {"worker_lost_after": 0.3}
    dead = MemoryBroker(url, consumer_id="dead:1", transport_options=options)
    dead.heartbeat({"worker": "d"}, held=0, running=[], register=True)
    fetch(dead, 1)
    alive = MemoryBroker(url, consumer_id="alive:2", transport_options=options)
    held = holdings(alive)
    assert held.presence is not None
    time.sleep(0.35)
    held.presence.tick()  # registers: present for no time yet
    assert alive.receive(["celery"], limit=1, timeout=0) == []
    time.sleep(0.35)
    held.presence.tick()
    [back] = alive.receive(["celery"], limit=1, timeout=0)
    assert back.redelivered
