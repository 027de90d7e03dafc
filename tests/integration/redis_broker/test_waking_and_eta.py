"""Redis broker behaviour beyond the contract: waking consumers, and ETA messages (the
delayed set, promotion, defer). Needs the shared Redis; every test works under its own
key prefix and deletes its keys afterwards."""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from celeriac._time import utcnow
from celeriac.brokers.base import Deferral, Delivery, Outgoing
from celeriac.brokers.redis.envelope import encode_envelope
from tests.integration.redis_broker.messages import arg_of, make_message, receive_n

if TYPE_CHECKING:
    from collections.abc import Callable

    from celeriac.brokers.redis import RedisBroker

pytestmark = pytest.mark.redis


# -- waking ------------------------------------------------------------------------------


def test_idle_receive_waits_without_polling(make_broker, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = make_broker()
    broker.receive(["q"], limit=1, timeout=0)
    fetches: list[int] = []
    original = broker._fetch

    def counting(*args: Any, **kwargs: Any) -> Any:
        fetches.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(broker, "_fetch", counting)
    assert broker.receive(["q"], limit=1, timeout=1.5) == []
    assert len(fetches) <= 2


def test_receive_wakes_for_a_plain_lpush(make_broker, client, prefix) -> None:
    consumer = make_broker()
    consumer.receive(["q"], limit=1, timeout=0)
    envelope = encode_envelope(make_message(1), exchange="", routing_key="q", priority=0)
    timer = threading.Timer(0.3, lambda: client.lpush(f"{prefix}q", envelope))
    timer.start()
    started = time.monotonic()
    got = consumer.receive(["q"], limit=1, timeout=10)
    waited = time.monotonic() - started
    timer.join()
    assert [arg_of(d) for d in got] == [1]
    assert waited < 1.5
    assert consumer._watcher is not None  # woken by the invalidation, not by polling


def _draining_consumer(
    make_broker: Callable[..., RedisBroker],
    monkeypatch: pytest.MonkeyPatch,
    *,
    messages: int,
    drain_every: float,
) -> tuple[RedisBroker, list[int]]:
    """A consumer that has taken its first full batch of 2 from `messages` queued ones,
    and the list its wake-up connection's drains are counted in from then on."""
    monkeypatch.setattr("celeriac.brokers.redis.broker.DRAIN_EVERY", drain_every)
    broker = make_broker()
    for n in range(messages):
        broker.publish(make_message(n), queue="q")
    assert len(broker.receive(["q"], limit=2, timeout=1)) == 2
    watcher = broker._watcher
    assert watcher is not None
    drains: list[int] = []
    original = watcher.drain

    def counting() -> None:
        drains.append(1)
        original()

    monkeypatch.setattr(watcher, "drain", counting)
    return broker, drains


def test_full_batches_skip_reading_the_wake_up_connection(
    make_broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, drains = _draining_consumer(make_broker, monkeypatch, messages=18, drain_every=60.0)
    for _ in range(7):
        assert len(broker.receive(["q"], limit=2, timeout=1)) == 2
    assert drains == []  # each fetch followed a full one
    assert len(broker.receive(["q"], limit=4, timeout=1)) == 2  # short: the lists ran dry
    assert drains == []
    assert broker.receive(["q"], limit=4, timeout=0) == []
    assert len(drains) == 1  # after a short fetch, drained before fetching again


def test_a_busy_consumer_still_reads_its_wake_up_connection_now_and_then(
    make_broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, drains = _draining_consumer(make_broker, monkeypatch, messages=8, drain_every=0.05)
    for _ in range(3):
        time.sleep(0.06)
        assert len(broker.receive(["q"], limit=2, timeout=1)) == 2
    assert len(drains) == 3


def test_a_consumer_that_took_full_batches_wakes_for_the_next_message(make_broker) -> None:
    consumer = make_broker(wakeup_interval=30)
    producer = make_broker("p")
    for n in range(4):
        producer.publish(make_message(n), queue="q")
    assert len(consumer.receive(["q"], limit=2, timeout=1)) == 2
    assert len(consumer.receive(["q"], limit=2, timeout=1)) == 2
    # Left on the wake-up connection: the notifications of those fetches' own pops.
    timer = threading.Timer(0.3, lambda: producer.publish(make_message(9), queue="q"))
    timer.start()
    started = time.monotonic()
    got = consumer.receive(["q"], limit=2, timeout=10)
    waited = time.monotonic() - started
    timer.join()
    assert [arg_of(d) for d in got] == [9]
    assert waited < 1.5  # woken by the publish's notification (no polling within 30 s)


def test_receive_wakes_when_an_eta_comes_due(make_broker) -> None:
    broker = make_broker(wakeup_interval=30)
    eta = utcnow() + timedelta(seconds=0.6)
    broker.publish(make_message(1), queue="q", eta=eta)
    started = time.monotonic()
    got = broker.receive(["q"], limit=1, timeout=10)
    waited = time.monotonic() - started
    assert [arg_of(d) for d in got] == [1]
    assert 0.4 < waited < 2.0


def test_polling_fallback_still_receives(make_broker) -> None:
    consumer = make_broker(wake_by_tracking=False)
    producer = make_broker("p")
    timer = threading.Timer(0.2, lambda: producer.publish(make_message(5), queue="q"))
    timer.start()
    got = consumer.receive(["q"], limit=1, timeout=5)
    timer.join()
    assert [arg_of(d) for d in got] == [5]


def test_queues_are_served_round_robin(make_broker) -> None:
    broker = make_broker()
    for n in range(3):
        broker.publish(make_message(n), queue="a")
        broker.publish(make_message(10 + n), queue="b")
    served = [broker.receive(["a", "b"], limit=1, timeout=1)[0].queue for _ in range(6)]
    assert served.count("a") == 3
    assert served != ["a", "a", "a", "b", "b", "b"]


# -- ETA ---------------------------------------------------------------------------------


def test_eta_messages_wait_in_a_sorted_set(make_broker, client, prefix) -> None:
    broker = make_broker()
    due = utcnow() + timedelta(hours=2)
    broker.publish(make_message(1), queue="q", eta=due)
    assert client.llen(f"{prefix}q") == 0
    [(member, score)] = client.zrange(f"{prefix}_celeriac.delayed.q", 0, -1, withscores=True)
    assert score == pytest.approx(due.timestamp())
    assert json.loads(member)["headers"]["task"] == "tests.echo"
    assert client.zscore(f"{prefix}_celeriac.delayed", "q") == pytest.approx(due.timestamp())
    assert broker.size("q") == 1
    assert broker.purge("q") == 1
    assert not client.exists(f"{prefix}_celeriac.delayed.q")


def test_due_etas_are_promoted_once_by_racing_consumers(make_broker) -> None:
    consumers = [make_broker(f"c{n}") for n in range(4)]
    eta = utcnow() + timedelta(seconds=0.5)
    consumers[0].publish_many([Outgoing(make_message(n), queue="q", eta=eta) for n in range(60)])
    got: list[Delivery] = []
    lock = threading.Lock()

    def drain(broker: RedisBroker) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            batch = broker.receive(["q"], limit=5, timeout=0.3)
            with lock:
                got.extend(batch)
                if len(got) >= 60:
                    break
        # Whoever stops last has seen any duplicate the others took.
        time.sleep(0.3)
        with lock:
            got.extend(broker.receive(["q"], limit=5, timeout=0))

    threads = [threading.Thread(target=drain, args=(b,)) for b in consumers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(arg_of(d) for d in got) == list(range(60))


def test_due_etas_for_queues_nobody_consumes_reach_their_list(make_broker, client, prefix) -> None:
    broker = make_broker()
    broker.publish(make_message(1), queue="other", eta=utcnow() + timedelta(seconds=0.2))
    time.sleep(0.3)
    broker.receive(["q"], limit=1, timeout=0)
    # Promoted into kombu's list, where a stock worker consuming "other" finds it.
    assert client.llen(f"{prefix}other") == 1


def test_promoted_etas_keep_their_priority_and_order(make_broker) -> None:
    broker = make_broker()
    base = utcnow()
    broker.publish(make_message(2), queue="q", eta=base + timedelta(seconds=0.3))
    broker.publish(make_message(1), queue="q", eta=base + timedelta(seconds=0.2))
    broker.publish(make_message(9), queue="q", eta=base + timedelta(seconds=0.1), priority=9)
    time.sleep(0.4)
    assert [arg_of(d) for d in broker.receive(["q"], limit=3, timeout=1)] == [1, 2, 9]


@pytest.mark.slow
def test_far_future_etas_live_only_in_redis(make_broker) -> None:
    producer = make_broker("p")
    consumer = make_broker()
    far = utcnow() + timedelta(days=30)
    # 20,000 here (a fetch that pulled them would trace megabytes); the 100,000 of the
    # acceptance run through a whole worker in test_redis_worker_eta_memory.py.
    for chunk in range(4):
        producer.publish_many(
            [Outgoing(make_message(chunk * 5000 + n), queue="q", eta=far) for n in range(5000)]
        )
    assert producer.size("q") == 20_000
    consumer.receive(["q"], limit=10, timeout=0)
    tracemalloc.start()
    try:
        for _ in range(5):
            assert consumer.receive(["q"], limit=10, timeout=0.05) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_defer_moves_a_lease_to_the_delayed_set_in_one_step(make_broker, client, prefix) -> None:
    broker = make_broker()
    broker.publish(make_message(1), queue="q", priority=3)
    [held] = receive_n(broker, "q", 1)
    broker.recover(broker.consumer_id, running=[held.tag])
    [again] = receive_n(broker, "q", 1)
    assert again.redelivered
    slotted = replace(again.message, headers=again.message.headers | {"slot": 1.5})
    broker.defer(again, eta=utcnow() + timedelta(seconds=0.4), message=slotted)
    assert not client.hexists(f"{prefix}unacked", again.tag)
    assert client.zcard(f"{prefix}_celeriac.delayed.q") == 1
    assert broker.receive(["q"], limit=1, timeout=0.1) == []
    [later] = receive_n(broker, "q", 1)
    assert later.tag == again.tag
    assert later.crashes == 1
    assert later.message.headers["slot"] == 1.5
    assert later.message.priority == 3
    assert not later.redelivered
    broker.ack(later)


def lease_taken_over(make_broker: Any, n: int) -> tuple[Any, Any, Delivery, Delivery]:
    """A message leased by "slow" whose lease lapsed and that "fast" then took:
    (slow, fast, slow's stale delivery, fast's delivery)."""
    slow = make_broker("slow", visibility_timeout=0.2)
    fast = make_broker("fast", visibility_timeout=0.2)
    slow.publish(make_message(n), queue="q")
    [stale] = receive_n(slow, "q", 1)
    time.sleep(0.3)
    fast.restore_expired()
    [taken] = receive_n(fast, "q", 1)
    return slow, fast, stale, taken


def test_defer_leaves_a_lease_that_went_elsewhere_alone(make_broker, client, prefix) -> None:
    slow, fast, held, taken = lease_taken_over(make_broker, 1)
    # The slow consumer's deferral comes too late: no second, delayed copy appears.
    slow.defer(held, eta=utcnow() + timedelta(seconds=60))
    assert client.zcard(f"{prefix}_celeriac.delayed.q") == 0
    assert client.hexists(f"{prefix}unacked", taken.tag)
    fast.defer(taken, eta=utcnow() + timedelta(seconds=60))
    assert client.zcard(f"{prefix}_celeriac.delayed.q") == 1
    assert not client.hexists(f"{prefix}unacked", taken.tag)


def test_defer_many_moves_each_lease_still_held_and_leaves_the_others_alone(
    make_broker, client, prefix
) -> None:
    slow, _, lapsed, taken = lease_taken_over(make_broker, 100)
    for n in range(4):
        slow.publish(make_message(n), queue="q")
    held = receive_n(slow, "q", 4)
    later = utcnow() + timedelta(seconds=60)
    slow.defer_many(
        [
            Deferral(lapsed, later),  # went to `fast` meanwhile: no second copy
            *(Deferral(delivery, later) for delivery in held[:3]),
            Deferral(held[3], utcnow() - timedelta(seconds=1)),  # due: back in line
        ]
    )
    waiting = {
        json.loads(e)["headers"]["id"] for e in client.zrange(f"{prefix}_celeriac.delayed.q", 0, -1)
    }
    assert waiting == {d.message.task_id for d in held[:3]}
    assert client.hexists(f"{prefix}unacked", taken.tag)
    for delivery in held:
        assert not client.hexists(f"{prefix}unacked", delivery.tag)
    [due] = receive_n(slow, "q", 1)
    assert due.message.task_id == held[3].message.task_id
    assert slow.receive(["q"], limit=5, timeout=0.1) == []
