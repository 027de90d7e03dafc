"""The SQLite broker's queue beyond the shared contract: priorities and order, leases,
ETA and dead letters."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from celeriac._time import UTC, FakeClock, utcnow
from celeriac.brokers.base import Delivery, Outgoing
from celeriac.protocol.codec import TaskCall, encode_task
from tests.unit.brokers.sqlite_messages import arg_of, make_message

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from celeriac.brokers.sqlite import SQLiteBroker


# -- priorities and order --------------------------------------------------------------


def test_higher_priorities_first_and_fifo_within_a_priority(make: Any) -> None:
    broker = make()
    order = [3, 0, 9, 3, 5, 9, 0, 5]
    for n, priority in enumerate(order):
        broker.publish(make_message(n), queue="q", priority=priority)
    got = broker.receive(["q"], limit=8, timeout=1)
    expected = sorted(range(len(order)), key=lambda n: (-order[n], n))
    assert [arg_of(d) for d in got] == expected


def test_priority_comes_from_the_message_and_is_clamped(make: Any) -> None:
    broker = make()
    low = encode_task(TaskCall(name="t", id="low", priority=-4))
    high = encode_task(TaskCall(name="t", id="high", priority=None))
    broker.publish(low, queue="q")  # properties say -4: clamped to 0
    broker.publish(high, queue="q", priority=42)  # clamped to 9
    middle = encode_task(TaskCall(name="t", id="middle", priority=4))
    broker.publish(middle, queue="q")  # from the message's properties
    got = broker.receive(["q"], limit=3, timeout=1)
    assert [d.message.task_id for d in got] == ["high", "middle", "low"]


def test_several_queues_merge_by_priority_then_publish_order(make: Any) -> None:
    broker = make()
    broker.publish(make_message(0), queue="a", priority=1)
    broker.publish(make_message(1), queue="b", priority=1)
    broker.publish(make_message(2), queue="b", priority=7)
    broker.publish(make_message(3), queue="a", priority=1)
    broker.publish(make_message(4), queue="c", priority=9)  # not asked for
    got = broker.receive(["a", "b"], limit=10, timeout=1)
    assert [arg_of(d) for d in got] == [2, 0, 1, 3]
    assert [d.queue for d in got] == ["b", "a", "b", "a"]


def test_a_large_backlog_is_served_in_batches_in_order(make: Any) -> None:
    broker = make()
    broker.publish_many([Outgoing(make_message(n), queue="q") for n in range(500)])
    seen: list[int] = []
    while batch := broker.receive(["q"], limit=64, timeout=0):
        seen.extend(arg_of(d) for d in batch)
        broker.ack_many(batch)
    assert seen == list(range(500))


# -- leases ----------------------------------------------------------------------------


def test_the_default_visibility_timeout_is_five_minutes(make: Any) -> None:
    broker = make()
    assert broker.visibility_timeout == 300.0
    broker.publish(make_message(), queue="q")
    before = time.time()
    [delivery] = broker.receive(["q"], limit=1, timeout=1)
    with broker._db.use() as connection:
        (due,) = connection.execute("SELECT due FROM message").fetchone()
    assert due == pytest.approx(before + 300.0, abs=2)
    broker.ack(delivery)


def test_a_lapsed_lease_is_redelivered_to_a_waiting_consumer(make: Any) -> None:
    holder = make("holder", visibility_timeout=0.4)
    waiter = make("waiter")
    holder.publish(make_message(1), queue="q")
    [first] = holder.receive(["q"], limit=1, timeout=1)
    assert not first.redelivered
    started = time.monotonic()
    # The waiter wakes by itself when the lease lapses; nobody publishes or restores.
    [again] = waiter.receive(["q"], limit=1, timeout=5)
    waited = time.monotonic() - started
    assert again.message.task_id == first.message.task_id
    assert again.redelivered
    assert again.tag != first.tag
    assert 0.2 <= waited < 3


def lapsed_and_taken(make: Any) -> tuple[SQLiteBroker, Delivery, SQLiteBroker, Delivery]:
    """`holder` leases a message, the lease lapses and `other` takes it: both deliveries."""
    clock = FakeClock(time.time())
    holder = make("holder", visibility_timeout=0.2, clock=clock)
    other = make("other", clock=clock)
    holder.publish(make_message(), queue="q")
    [stale] = holder.receive(["q"], limit=1, timeout=1)
    clock.advance(0.3)
    [current] = other.receive(["q"], limit=1, timeout=1)
    return holder, stale, other, current


def test_a_late_ack_from_a_lapsed_holder_does_not_touch_the_new_lease(make: Any) -> None:
    holder, stale, other, current = lapsed_and_taken(make)
    holder.ack(stale)
    holder.extend([stale], seconds=60)
    holder.reject(stale, requeue=True)
    assert other.size("q") == 0
    with other._db.use() as connection:
        (owner,) = connection.execute("SELECT owner FROM message").fetchone()
    assert owner == "other"
    other.ack(current)
    with other._db.use() as connection:
        assert connection.execute("SELECT count(*) FROM message").fetchone() == (0,)


def test_extend_renews_a_lease_from_now(make: Any) -> None:
    clock = FakeClock(time.time())
    broker = make(visibility_timeout=0.3, clock=clock)
    broker.publish(make_message(), queue="q")
    [delivery] = broker.receive(["q"], limit=1, timeout=1)
    broker.extend([delivery], seconds=30)
    clock.advance(0.5)
    assert broker.restore_expired() == 0
    assert make("other", clock=clock).receive(["q"], limit=1, timeout=0.2) == []


def test_crash_counts_accumulate_in_the_database(make: Any) -> None:
    first = make("first")
    first.publish(make_message(), queue="q")
    for expected in (1, 2):
        [held] = first.receive(["q"], limit=1, timeout=1)
        assert held.crashes == expected - 1
        supervisor = make("supervisor")
        assert supervisor.recover("first", running=[held.tag]) == 1
    # A brand-new broker object (another process) reads the count from the file.
    [back] = make("first").receive(["q"], limit=1, timeout=1)
    assert back.crashes == 2
    assert back.redelivered


def test_recover_only_touches_the_dead_consumers_messages(make: Any) -> None:
    dead = make("dead")
    alive = make("alive")
    for n in range(4):
        dead.publish(make_message(n), queue="q")
    held_dead = dead.receive(["q"], limit=2, timeout=1)
    held_alive = alive.receive(["q"], limit=2, timeout=1)
    assert alive.recover("dead") == 2
    assert alive.recover("dead") == 0
    back = alive.receive(["q"], limit=5, timeout=0.3)
    assert {d.message.task_id for d in back} == {d.message.task_id for d in held_dead}
    alive.ack_many(held_alive + back)


def test_requeue_many_returns_messages_at_once(make: Any) -> None:
    broker = make()
    for n in range(3):
        broker.publish(make_message(n), queue="q")
    held = broker.receive(["q"], limit=3, timeout=1)
    broker.requeue_many(held)
    again = make("other").receive(["q"], limit=3, timeout=1)
    assert [arg_of(d) for d in again] == [0, 1, 2]
    assert all(d.redelivered for d in again)


# -- ETA -------------------------------------------------------------------------------


def test_an_eta_message_waits_in_the_database(make: Any) -> None:
    producer = make("producer")
    producer.publish(make_message(1), queue="q", eta=utcnow() + timedelta(seconds=0.6))
    producer.close()
    consumer = make("consumer")  # knows nothing but the file
    assert consumer.size("q") == 1
    started = time.monotonic()
    [delivery] = consumer.receive(["q"], limit=1, timeout=5)
    waited = time.monotonic() - started
    assert arg_of(delivery) == 1
    assert 0.4 <= waited < 3  # woke for the ETA itself, not the 5 s timeout
    assert not delivery.redelivered


def test_an_eta_in_the_past_is_ready_at_once(make: Any) -> None:
    broker = make()
    broker.publish(make_message(1), queue="q", eta=utcnow() - timedelta(hours=1))
    assert len(broker.receive(["q"], limit=1, timeout=0)) == 1


@pytest.fixture
def local_time_far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 5:30 h east of UTC (a POSIX TZ string: no tz database needed)."""
    monkeypatch.setenv("TZ", "IST-5:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_time_far_from_utc")
def test_a_naive_eta_is_taken_as_utc(make: Any) -> None:
    assert time.timezone == -19800  # the fixture took effect
    broker = make()
    naive = (utcnow() + timedelta(hours=1)).replace(tzinfo=None)
    broker.publish(make_message(1), queue="q", eta=naive)
    with broker._db.use() as connection:
        (due,) = connection.execute("SELECT due FROM message").fetchone()
    assert due == pytest.approx(time.time() + 3600, abs=5)


def test_a_due_eta_message_keeps_its_priority(make: Any) -> None:
    clock = FakeClock(time.time())
    broker = make(clock=clock)
    eta = datetime.fromtimestamp(clock.time() + 0.3, UTC)
    broker.publish(make_message(0), queue="q", priority=1)
    broker.publish(make_message(1), queue="q", priority=8, eta=eta)
    clock.advance(0.4)
    got = broker.receive(["q"], limit=2, timeout=1)
    assert [arg_of(d) for d in got] == [1, 0]


# -- dead letters ----------------------------------------------------------------------


def test_dead_letters_keep_queue_reason_time_and_the_whole_message(
    make: Any, tmp_path: Path
) -> None:
    broker = make()
    message = make_message(5, custom={"nested": [1, 2]})
    broker.publish(message, queue="q", priority=6)
    [delivery] = broker.receive(["q"], limit=1, timeout=1)
    before = time.time()
    broker.dead_letter(delivery, reason="unknown task tests.echo")
    [dead] = broker.list_dead_letters()
    assert dead.queue == "q"
    assert dead.reason == "unknown task tests.echo"
    assert before - 1 <= dead.failed_at.timestamp() <= time.time() + 1
    assert dead.message == message
    columns = sqlite3.connect(tmp_path / "broker.db").execute(
        "SELECT queue, reason, failed_at, priority, body FROM dead_letter"
    )
    assert columns.fetchone()[:2] == ("q", "unknown task tests.echo")
    assert broker.stats().dead_lettered == 1


def test_a_replayed_dead_letter_is_a_fresh_message(make: Any) -> None:
    broker = make()
    broker.publish(make_message(1), queue="q")
    [held] = broker.receive(["q"], limit=1, timeout=1)
    broker.recover("consumer-a", running=[held.tag])
    [again] = broker.receive(["q"], limit=1, timeout=1)
    assert again.crashes == 1
    broker.dead_letter(again, reason="kept killing workers")
    [dead] = broker.list_dead_letters()
    assert broker.replay_dead_letter(dead.id)
    [fresh] = broker.receive(["q"], limit=1, timeout=1)
    assert (fresh.redelivered, fresh.crashes) == (False, 0)
    assert fresh.message.task_id == held.message.task_id


def test_dead_lettering_a_lost_lease_does_not_duplicate_the_message(make: Any) -> None:
    holder, stale, other, current = lapsed_and_taken(make)
    holder.dead_letter(stale, reason="too late")
    assert holder.list_dead_letters() == []
    other.ack(current)


def test_dead_letters_are_listed_oldest_first_and_limited(make: Any) -> None:
    broker = make()
    for n in range(3):
        broker.publish(make_message(n), queue="q")
    for delivery in broker.receive(["q"], limit=3, timeout=1):
        broker.dead_letter(delivery, reason=f"r{arg_of(delivery)}")
    assert [d.reason for d in broker.list_dead_letters()] == ["r0", "r1", "r2"]
    assert [d.reason for d in broker.list_dead_letters(limit=2)] == ["r0", "r1"]
    assert broker.purge_dead_letters() == 3
