"""The presence contract (see `celeriac/brokers/base.py`), on every broker that keeps
presence records: heartbeats on the server's clock, reaping a silent consumer's messages
exactly once with a crash counted against what it ran, and clean withdrawal."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from tests.contract.test_brokers import make_message, receive_all
from tests.helpers import capability_skip, unique

if TYPE_CHECKING:
    from celeriac.brokers.base import Broker
    from tests.contract.conftest import BrokerFactory

IDENTITY: dict[str, str | int] = {
    "worker": "w1@box",
    "host": "box",
    "pid": 4242,
    "pool": "threads",
    "concurrency": 8,
}
# Short, so that the tests wait little for a consumer to count as silent.
LOST_AFTER = 0.6


def present(factory: BrokerFactory, name: str, *, lost_after: float = LOST_AFTER) -> Broker:
    broker = factory(name, worker_lost_after=lost_after)
    if not broker.supports_presence:
        capability_skip(broker, "presence records")
    return broker


def test_a_heartbeat_registers_the_consumer_with_its_identity(
    broker_factory: BrokerFactory,
) -> None:
    broker = present(broker_factory, "a")
    assert broker.heartbeat(IDENTITY, held=3, running=["t1"], register=True)
    assert broker.heartbeat(IDENTITY, held=5, running=["t1", "t2"])
    [record] = [r for r in broker.consumers() if r.consumer_id == broker.consumer_id]
    assert (record.worker, record.host, record.pid) == ("w1@box", "box", 4242)
    assert (record.pool, record.concurrency) == ("threads", 8)
    assert record.held == 5
    assert record.running == ("t1", "t2")
    assert 0 <= record.age < 5
    # Stamped with the server's clock, which this machine shares.
    assert abs(record.heartbeat - time.time()) < 5


def test_a_silent_consumers_messages_come_back_with_a_crash_on_the_running_one(
    broker_factory: BrokerFactory,
) -> None:
    dead = present(broker_factory, "dead")
    reaper = present(broker_factory, "reaper")
    queue = unique("q")
    dead.declare(queue)
    for n in range(3):
        dead.publish(make_message(n), queue=queue)
    held = receive_all(dead, queue, 3)
    running = held[0]
    dead.heartbeat(IDENTITY, held=3, running=[running.tag], register=True)
    reaper.heartbeat(IDENTITY, held=0, running=[], register=True)
    # Not yet silent for long enough: nothing happens.
    assert reaper.reap() == {}
    time.sleep(LOST_AFTER + 0.2)
    reaper.heartbeat(IDENTITY, held=0, running=[])
    assert reaper.reap() == {dead.consumer_id: 3}
    back = receive_all(reaper, queue, 3)
    crashes = {d.message.headers["id"]: d.crashes for d in back}
    assert crashes == {d.message.headers["id"]: (1 if d is running else 0) for d in held}
    assert all(d.redelivered for d in back)
    # The record is gone; the dead consumer, were it alive after all, learns so.
    assert dead.consumer_id not in {r.consumer_id for r in reaper.consumers()}
    assert not dead.heartbeat(IDENTITY, held=0, running=[])


def test_two_reapers_racing_return_each_message_once(broker_factory: BrokerFactory) -> None:
    dead = present(broker_factory, "dead")
    reapers = [present(broker_factory, f"reaper{i}") for i in range(4)]
    queue = unique("q")
    dead.declare(queue)
    for n in range(50):
        dead.publish(make_message(n), queue=queue)
    held = receive_all(dead, queue, 50)
    dead.heartbeat(IDENTITY, held=50, running=[held[0].tag], register=True)
    time.sleep(LOST_AFTER + 0.2)
    results: list[dict[str, int]] = []
    start = threading.Barrier(len(reapers))

    def reap(broker: Broker) -> None:
        start.wait()
        results.append(broker.reap())

    threads = [threading.Thread(target=reap, args=(r,)) for r in reapers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(sum(r.values()) for r in results) == 50
    back = receive_all(reapers[0], queue, 60, timeout=2.0)
    assert sorted(d.message.headers["id"] for d in back) == sorted(
        d.message.headers["id"] for d in held
    )
    assert sum(d.crashes for d in back) == 1


def test_a_live_consumer_is_not_reaped(broker_factory: BrokerFactory) -> None:
    alive = present(broker_factory, "alive")
    reaper = present(broker_factory, "reaper")
    queue = unique("q")
    alive.declare(queue)
    alive.publish(make_message(), queue=queue)
    receive_all(alive, queue, 1)
    alive.heartbeat(IDENTITY, held=1, running=[], register=True)
    deadline = time.monotonic() + 3 * LOST_AFTER
    while time.monotonic() < deadline:
        alive.heartbeat(IDENTITY, held=1, running=[])
        assert reaper.reap() == {}
        time.sleep(LOST_AFTER / 4)
    assert reaper.receive([queue], limit=1, timeout=0.1) == []


def test_withdraw_and_recover_remove_the_record(broker_factory: BrokerFactory) -> None:
    leaving = present(broker_factory, "leaving")
    dying = present(broker_factory, "dying")
    leaving.heartbeat(IDENTITY, held=0, running=[], register=True)
    dying.heartbeat(IDENTITY, held=0, running=[], register=True)
    leaving.withdraw()
    dying.recover(dying.consumer_id)
    ids = {r.consumer_id for r in leaving.consumers()}
    assert leaving.consumer_id not in ids
    assert dying.consumer_id not in ids


def test_the_visibility_sweep_counts_a_crash_against_what_was_listed_running(
    broker_factory: BrokerFactory,
) -> None:
    # On Redis the sweeper's visibility timeout decides (every peer sweeps the same index).
    sweeper = broker_factory("sweeper", visibility_timeout=0.5)
    dead = broker_factory("dead", worker_lost_after=LOST_AFTER, visibility_timeout=0.5)
    if not dead.supports_presence:
        capability_skip(dead, "presence records")
    queue = unique("q")
    dead.declare(queue)
    for n in range(2):
        dead.publish(make_message(n), queue=queue)
    held = receive_all(dead, queue, 2)
    dead.heartbeat(IDENTITY, held=2, running=[held[0].tag], register=True)
    time.sleep(0.7)
    sweeper.restore_expired()
    back = receive_all(sweeper, queue, 2)
    crashes = {d.message.headers["id"]: d.crashes for d in back}
    assert crashes == {
        held[0].message.headers["id"]: 1,
        held[1].message.headers["id"]: 0,
    }
