"""The broker contract (see `celeriac/brokers/base.py`), run on every implementation."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from celeriac._time import FakeClock, utcnow
from celeriac.brokers.base import Broker, Delivery, Outgoing
from celeriac.exceptions import BrokerError
from celeriac.protocol.codec import TaskCall, decode_task, encode_task
from tests.helpers import capability_skip, unique, wait_for

if TYPE_CHECKING:
    from celeriac.protocol.message import Message
    from tests.contract.conftest import BrokerFactory

ACCEPT = frozenset({"application/json"})


def make_message(n: int = 0, *, priority: int | None = None, **headers: object) -> Message:
    call = TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[n], priority=priority)
    call.headers = dict(headers)
    return encode_task(call)


def arg_of(message: Message) -> Any:
    return decode_task(message, accept=ACCEPT).args[0]


def receive_all(broker: Broker, queue: str, count: int, *, timeout: float = 5.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(broker.receive([queue], limit=count - len(got), timeout=0.5))
    return got


def test_published_message_arrives_intact(broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    queue = unique("q")
    broker.declare(queue)
    message = make_message(7, custom="value")
    broker.publish(message, queue=queue)
    [delivery] = receive_all(broker, queue, 1)
    assert delivery.queue == queue
    assert delivery.message.body == message.body
    assert delivery.message.headers["id"] == message.headers["id"]
    assert delivery.message.headers["custom"] == "value"
    assert delivery.message.headers["timelimit"] == [None, None]
    assert delivery.message.properties["correlation_id"] == message.headers["id"]
    assert delivery.message.content_type == "application/json"
    assert not delivery.redelivered
    assert delivery.crashes == 0
    broker.ack(delivery)


def test_receive_on_empty_queue_returns_nothing_after_timeout(
    broker_factory: BrokerFactory,
) -> None:
    broker = broker_factory()
    queue = unique("q")
    broker.declare(queue)
    started = time.monotonic()
    assert broker.receive([queue], limit=5, timeout=0.3) == []
    assert time.monotonic() - started >= 0.25


def test_receive_wakes_soon_after_a_publish(broker_factory: BrokerFactory) -> None:
    consumer = broker_factory("consumer")
    producer = broker_factory("producer")
    queue = unique("q")
    consumer.declare(queue)
    timer = threading.Timer(0.3, lambda: producer.publish(make_message(1), queue=queue))
    timer.start()
    try:
        started = time.monotonic()
        got = consumer.receive([queue], limit=1, timeout=5.0)
        waited = time.monotonic() - started
    finally:
        timer.cancel()
    assert len(got) == 1
    assert waited < 2.0


def test_messages_come_out_in_fifo_order(broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    queue = unique("q")
    broker.declare(queue)
    for n in range(10):
        broker.publish(make_message(n), queue=queue)
    got = receive_all(broker, queue, 10)
    assert [arg_of(d.message) for d in got] == list(range(10))
    broker.ack_many(got)


def test_priorities_are_served_in_the_brokers_order(broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    if not broker.supports_priority:
        pytest.fail(f"{type(broker).__name__} must support priorities")
    queue = unique("q")
    broker.declare(queue)
    for n, priority in enumerate([0, 9, 5, 9, 0]):
        broker.publish(make_message(n, priority=priority), queue=queue, priority=priority)
    got = receive_all(broker, queue, 5)
    order = [arg_of(d.message) for d in got]
    if broker.higher_priority_first:
        assert order == [1, 3, 2, 0, 4]
    else:
        assert order == [0, 4, 2, 1, 3]


def test_acked_message_is_never_delivered_again(broker_factory: BrokerFactory) -> None:
    clock = FakeClock(time.time())
    broker = broker_factory(visibility_timeout=0.5, clock=clock)
    queue = unique("q")
    broker.declare(queue)
    broker.publish(make_message(), queue=queue)
    [delivery] = receive_all(broker, queue, 1)
    broker.ack(delivery)
    clock.advance(0.7)  # past the lease it had
    broker.restore_expired()
    assert broker.receive([queue], limit=1, timeout=0.3) == []


def test_rejected_with_requeue_comes_back_redelivered(broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    queue = unique("q")
    broker.declare(queue)
    broker.publish(make_message(3), queue=queue)
    [first] = receive_all(broker, queue, 1)
    broker.reject(first, requeue=True)
    [second] = receive_all(broker, queue, 1)
    assert second.message.headers["id"] == first.message.headers["id"]
    assert second.redelivered
    broker.ack(second)


def test_rejected_without_requeue_is_dropped(broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    queue = unique("q")
    broker.declare(queue)
    broker.publish(make_message(), queue=queue)
    [delivery] = receive_all(broker, queue, 1)
    broker.reject(delivery, requeue=False)
    assert broker.receive([queue], limit=1, timeout=0.3) == []


def test_a_leased_message_goes_to_one_consumer_only(broker_factory: BrokerFactory) -> None:
    first = broker_factory("a")
    second = broker_factory("b")
    queue = unique("q")
    first.declare(queue)
    for n in range(20):
        first.publish(make_message(n), queue=queue)
    got_a: list[Delivery] = []
    got_b: list[Delivery] = []

    def drain(broker: Broker, into: list[Delivery]) -> None:
        while True:
            batch = broker.receive([queue], limit=3, timeout=0.5)
            if not batch:
                return
            into.extend(batch)

    threads = [
        threading.Thread(target=drain, args=(first, got_a)),
        threading.Thread(target=drain, args=(second, got_b)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    ids = [d.message.headers["id"] for d in got_a + got_b]
    assert len(ids) == 20
    assert len(set(ids)) == 20


def test_lapsed_lease_makes_the_message_visible_again(broker_factory: BrokerFactory) -> None:
    clock = FakeClock(time.time())
    broker = broker_factory(visibility_timeout=0.5, clock=clock)
    if not broker.supports_leases:  # see test_closed_connection_returns_messages
        capability_skip(broker, "leases that lapse (held while connected)")
    queue = unique("q")
    broker.declare(queue)
    broker.publish(make_message(), queue=queue)
    [first] = receive_all(broker, queue, 1)
    clock.advance(0.7)
    broker.restore_expired()
    [again] = receive_all(broker, queue, 1)
    assert again.message.headers["id"] == first.message.headers["id"]
    assert again.redelivered


def test_extended_lease_keeps_the_message_hidden(broker_factory: BrokerFactory) -> None:
    clock = FakeClock(time.time())
    broker = broker_factory(visibility_timeout=0.5, clock=clock)
    if not broker.supports_leases:
        capability_skip(broker, "leases to extend (held while connected)")
    queue = unique("q")
    broker.declare(queue)
    broker.publish(make_message(), queue=queue)
    [delivery] = receive_all(broker, queue, 1)
    for _ in range(3):  # 0.9 s in all: the lease lapses unless extended
        clock.advance(0.3)
        broker.extend([delivery], seconds=0.5)
    broker.restore_expired()
    assert broker.receive([queue], limit=1, timeout=0.2) == []
    broker.ack(delivery)


def test_recover_returns_a_dead_consumers_messages_and_counts_crashes(
    broker_factory: BrokerFactory,
) -> None:
    dead = broker_factory("dead")
    alive = broker_factory("alive")
    if not dead.supports_recover:  # see test_closed_connection_returns_messages
        capability_skip(dead, "recover (the server returns a closed connection's messages)")
    queue = unique("q")
    dead.declare(queue)
    for n in range(3):
        dead.publish(make_message(n), queue=queue)
    held = receive_all(dead, queue, 3)
    running = held[0]
    assert alive.recover(dead.consumer_id, running=[running.tag]) == 3
    back = receive_all(alive, queue, 3)
    crashes = {d.message.headers["id"]: d.crashes for d in back}
    assert crashes[running.message.headers["id"]] == 1
    assert sorted(crashes.values()) == [0, 0, 1]
    assert all(d.redelivered for d in back)


def test_recover_discards_what_it_is_told_to(broker_factory: BrokerFactory) -> None:
    dead = broker_factory("dead")
    alive = broker_factory("alive")
    if not dead.supports_recover:
        capability_skip(dead, "recover (the server returns a closed connection's messages)")
    queue = unique("q")
    dead.declare(queue)
    for n in range(2):
        dead.publish(make_message(n), queue=queue)
    held = receive_all(dead, queue, 2)
    assert alive.recover(dead.consumer_id, discard=[held[0].tag]) == 1
    [back] = receive_all(alive, queue, 1)
    assert back.message.headers["id"] == held[1].message.headers["id"]
    assert alive.receive([queue], limit=1, timeout=0.3) == []


def test_closed_connection_returns_messages(broker_factory: BrokerFactory) -> None:
    consumer = broker_factory("gone")
    queue = unique("q")
    consumer.declare(queue)
    consumer.publish(make_message(), queue=queue)
    [held] = receive_all(consumer, queue, 1)
    if consumer.supports_recover:
        consumer.recover(consumer.consumer_id)
    consumer.close()
    other = broker_factory("other")
    [back] = receive_all(other, queue, 1)
    assert back.message.headers["id"] == held.message.headers["id"]
    assert back.redelivered


def test_eta_message_waits_on_the_broker_until_due(broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    queue = unique("q")
    broker.declare(queue)
    if broker.supports_presence:
        # A live consumer is present (on Redis, with none, an ETA message goes straight
        # to its list for stock Celery workers: see the Redis broker's tests).
        broker.heartbeat({"worker": "w@h", "pool": "solo"}, held=0, running=[], register=True)
    eta = utcnow() + timedelta(seconds=1.0)
    broker.publish(make_message(1), queue=queue, eta=eta)
    broker.publish(make_message(2), queue=queue)
    [now] = receive_all(broker, queue, 1)
    assert arg_of(now.message) == 2
    assert broker.receive([queue], limit=1, timeout=0.3) == []
    [later] = receive_all(broker, queue, 1, timeout=10)
    assert arg_of(later.message) == 1
    assert time.time() >= eta.timestamp() - 0.01


def test_size_counts_waiting_and_delayed_messages_and_purge_clears_them(
    broker_factory: BrokerFactory,
) -> None:
    broker = broker_factory()
    queue = unique("q")
    broker.declare(queue)
    for n in range(3):
        broker.publish(make_message(n), queue=queue)
    broker.publish(make_message(9), queue=queue, eta=utcnow() + timedelta(hours=1))
    assert wait_for(lambda: broker.size(queue) == 4, timeout=5)
    assert broker.purge(queue) == 4
    assert broker.size(queue) == 0


def test_depth_tells_ready_delayed_and_held_apart(broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    if broker.supports_presence:
        # A consumer present as a worker's is: its leases are listed, and on Redis an
        # ETA message waits broker-side (with no celeriac consumer it goes to the list).
        broker.heartbeat({"worker": "w@h"}, held=0, running=[], register=True)
    queue = unique("q")
    broker.declare(queue)
    first = make_message(0)
    broker.publish(first, queue=queue)
    broker.publish(make_message(1), queue=queue)
    broker.publish(make_message(9), queue=queue, eta=utcnow() + timedelta(hours=1))
    assert wait_for(lambda: broker.size(queue) == 3, timeout=5)
    depth = broker.depth(queue)
    if depth.delayed is None:  # the broker cannot tell delayed from ready
        assert depth.ready == 3
        return
    assert (depth.ready, depth.delayed, depth.held) == (2, 1, 0)
    assert depth.oldest_id == first.headers["id"]
    [delivery] = receive_all(broker, queue, 1)
    depth = broker.depth(queue)
    assert (depth.ready, depth.delayed, depth.held) == (1, 1, 1)
    broker.ack(delivery)


def test_publish_many_delivers_every_message(broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    queue = unique("q")
    broker.declare(queue)
    broker.publish_many([Outgoing(make_message(n), queue=queue) for n in range(25)])
    got = receive_all(broker, queue, 25)
    assert sorted(arg_of(d.message) for d in got) == list(range(25))


def test_dead_letter_keeps_message_and_reason_and_replays(broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    queue = unique("q")
    broker.declare(queue)
    message = make_message(5)
    broker.publish(message, queue=queue)
    [delivery] = receive_all(broker, queue, 1)
    broker.dead_letter(delivery, reason="unknown task tests.echo")
    assert broker.receive([queue], limit=1, timeout=0.3) == []
    [dead] = wait_for(lambda: broker.list_dead_letters(), timeout=5)
    assert dead.reason == "unknown task tests.echo"
    assert dead.queue == queue
    assert dead.message.body == message.body
    assert dead.message.headers["id"] == message.headers["id"]
    assert broker.replay_dead_letter(dead.id)
    [back] = receive_all(broker, queue, 1)
    assert back.message.headers["id"] == message.headers["id"]
    assert broker.list_dead_letters() == []
    assert not broker.replay_dead_letter(dead.id)


def test_purge_dead_letters_empties_the_store(broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    queue = unique("q")
    broker.declare(queue)
    for n in range(2):
        broker.publish(make_message(n), queue=queue)
    for delivery in receive_all(broker, queue, 2):
        broker.dead_letter(delivery, reason="bad")
    wait_for(lambda: len(broker.list_dead_letters()) == 2, timeout=5)
    assert broker.purge_dead_letters() == 2
    assert broker.list_dead_letters() == []


def test_dead_letter_count_counts_the_store(broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    queue = unique("q")
    broker.declare(queue)
    assert broker.dead_letter_count() == 0
    for n in range(3):
        broker.publish(make_message(n), queue=queue)
    for delivery in receive_all(broker, queue, 3):
        broker.dead_letter(delivery, reason="bad")
    wait_for(lambda: broker.dead_letter_count() == 3, timeout=5)


def test_an_eta_message_is_overdue_only_once_its_time_has_passed(
    broker_factory: BrokerFactory,
) -> None:
    broker = broker_factory()
    if broker.supports_presence:
        # On Redis an ETA message waits broker-side only while a celeriac consumer is present.
        broker.heartbeat({"worker": "w@h"}, held=0, running=[], register=True)
    queue = unique("q")
    broker.declare(queue)
    broker.publish(make_message(1), queue=queue, eta=utcnow() + timedelta(hours=1))
    try:
        assert broker.overdue_age(queue) is None
    except NotImplementedError:
        capability_skip(broker, "readable due times")
    broker.publish(make_message(2), queue=queue, eta=utcnow() + timedelta(seconds=0.2))
    age = wait_for(lambda: broker.overdue_age(queue), timeout=5)
    assert age is not None
    assert 0 < age < 5


def test_rate_slots_are_spaced_by_the_interval(broker_factory: BrokerFactory) -> None:
    first = broker_factory("a")
    second = broker_factory("b")
    if not first.supports_rate_limit:
        capability_skip(first, "rate slots (the result backend keeps them)")
    key = unique("rate")
    slots = [first.reserve_rate_slot(key, interval=2.0) for _ in range(2)]
    slots.append(second.reserve_rate_slot(key, interval=2.0))
    assert slots[1] - slots[0] == pytest.approx(2.0, abs=0.05)
    assert slots[2] - slots[1] == pytest.approx(2.0, abs=0.05)
    assert abs(slots[0] - time.time()) < 1.0


# -- dead-letter limits (transport options dead_letter_ttl / _max / _body_max) ---------


def dead_letter_all(broker: Broker, queue: str, messages: list[Message]) -> None:
    broker.declare(queue)
    for message in messages:
        broker.publish(message, queue=queue)
    for delivery in sorted(
        receive_all(broker, queue, len(messages)), key=lambda d: arg_of(d.message)
    ):
        broker.dead_letter(delivery, reason=f"bad {arg_of(delivery.message)}")


def test_dead_letters_past_the_cap_drop_the_oldest(broker_factory: BrokerFactory) -> None:
    broker = broker_factory(dead_letter_max=3)
    dead_letter_all(broker, unique("q"), [make_message(n) for n in range(5)])
    letters = wait_for(lambda: broker.list_dead_letters(limit=10), timeout=5)
    assert sorted(letter.reason for letter in letters) == ["bad 2", "bad 3", "bad 4"]


def test_dead_letters_past_their_ttl_are_dropped(broker_factory: BrokerFactory) -> None:
    clock = FakeClock(time.time())
    broker = broker_factory(dead_letter_ttl=0.5, clock=clock)
    queue = unique("q")
    dead_letter_all(broker, queue, [make_message(0)])
    clock.advance(1)
    if type(broker).__name__ == "AMQPBroker":
        # RabbitMQ expires them itself (a per-message TTL), on its own clock.
        wait_for(lambda: broker.list_dead_letters() == [], timeout=10, what="expiry")
        return
    dead_letter_all(broker, queue, [make_message(1)])
    assert [letter.reason for letter in broker.list_dead_letters()] == ["bad 1"]


def test_a_large_body_is_kept_as_a_prefix_and_not_replayed(
    broker_factory: BrokerFactory,
) -> None:
    broker = broker_factory(dead_letter_body_max=1000)
    message = make_message("x" * 5000)  # type: ignore[arg-type]
    dead_letter_all(broker, unique("q"), [message])
    [letter] = wait_for(lambda: broker.list_dead_letters(), timeout=5)
    assert letter.body_size == len(message.body)
    assert letter.message.body == message.body[:1000]
    assert letter.message.headers["id"] == message.headers["id"]
    with pytest.raises(BrokerError, match="only the first 1000 of its"):
        broker.replay_dead_letter(letter.id)
    assert [one.id for one in broker.list_dead_letters()] == [letter.id]


def test_a_small_body_is_kept_whole(broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    message = make_message(1)
    dead_letter_all(broker, unique("q"), [message])
    [letter] = wait_for(lambda: broker.list_dead_letters(), timeout=5)
    assert letter.body_size is None
    assert letter.message.body == message.body
