"""Redis broker behaviour beyond the contract: kombu's exact layout, the no-loss fetch,
leases, ETA promotion, dead letters, rate slots and waking. Needs the shared Redis; every
test works under its own key prefix and deletes its keys afterwards."""

from __future__ import annotations

import itertools
import json
import threading
import time
import tracemalloc
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
import redis

from celeriac._time import utcnow
from celeriac.brokers import create_broker
from celeriac.brokers.base import Deferral, Delivery, Outgoing
from celeriac.brokers.redis import RedisBroker
from celeriac.brokers.redis.envelope import encode_envelope
from celeriac.exceptions import BrokerConnectionError
from celeriac.protocol.codec import TaskCall, decode_task, encode_task
from tests.helpers import REDIS_URL, require_redis, unique, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from celeriac.protocol.message import Message

pytestmark = pytest.mark.redis

ACCEPT = frozenset({"application/json"})
SEP = "\x06\x16"


def make_message(n: int = 0, *, priority: int | None = None, **headers: Any) -> Message:
    call = TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[n], priority=priority)
    call.headers = dict(headers)
    return encode_task(call)


def arg_of(delivery: Delivery) -> Any:
    return decode_task(delivery.message, accept=ACCEPT).args[0]


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


def receive_n(broker: RedisBroker, queue: str, count: int, timeout: float = 5.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(broker.receive([queue], limit=count - len(got), timeout=0.5))
    return got


# -- layout ----------------------------------------------------------------------------


def test_envelope_is_kombus_json_envelope(make_broker, client, prefix) -> None:
    broker = make_broker()
    message = make_message(4, priority=None, custom="x")
    broker.publish(message, queue="q")
    [raw] = client.lrange(f"{prefix}q", 0, -1)
    envelope = json.loads(raw)
    assert list(envelope) == ["body", "content-encoding", "content-type", "headers", "properties"]
    assert envelope["content-type"] == "application/json"
    assert envelope["content-encoding"] == "utf-8"
    assert envelope["headers"] == message.headers
    properties = envelope["properties"]
    assert list(properties)[-4:] == ["delivery_info", "priority", "body_encoding", "delivery_tag"]
    assert properties["delivery_info"] == {"exchange": "", "routing_key": "q"}
    assert properties["priority"] == 0
    assert properties["body_encoding"] == "base64"
    assert str(uuid.UUID(properties["delivery_tag"])) == properties["delivery_tag"]
    assert properties["correlation_id"] == message.headers["id"]
    import base64

    assert base64.b64decode(envelope["body"]) == message.body


def test_priorities_use_kombus_step_lists(make_broker, client, prefix) -> None:
    broker = make_broker()
    for priority in (0, 2, 3, 5, 6, 8, 9):
        broker.publish(make_message(priority), queue="q", priority=priority)
    assert client.llen(f"{prefix}q") == 2
    assert client.llen(f"{prefix}q{SEP}3") == 2
    assert client.llen(f"{prefix}q{SEP}6") == 2
    assert client.llen(f"{prefix}q{SEP}9") == 1
    assert broker.size("q") == 7
    order = [arg_of(d) for d in receive_n(broker, "q", 7)]
    assert order == [0, 2, 3, 5, 6, 8, 9]


def test_custom_priority_steps_and_separator(make_broker, client, prefix) -> None:
    broker = make_broker(priority_steps=list(range(10)), sep=":")
    broker.publish(make_message(7), queue="q", priority=7)
    broker.publish(make_message(1), queue="q", priority=1)
    assert client.llen(f"{prefix}q:7") == 1
    assert client.llen(f"{prefix}q:1") == 1
    assert [arg_of(d) for d in receive_n(broker, "q", 2)] == [1, 7]


def test_declare_writes_both_kombu_binding_tables(make_broker, client, prefix) -> None:
    make_broker().declare("tasks")
    member = f"tasks{SEP}{SEP}tasks".encode()
    assert client.smembers(f"{prefix}_kombu.binding.tasks") == {member}
    assert client.smembers(f"{prefix}_kombu.binding_permanent.tasks") == {member}


def test_every_key_carries_the_global_prefix(make_broker, client, prefix) -> None:
    broker = make_broker()
    broker.declare("q")
    broker.publish(make_message(1), queue="q", priority=5)
    broker.publish(make_message(2), queue="q", eta=utcnow() + timedelta(hours=1))
    [delivery] = receive_n(broker, "q", 1)
    broker.dead_letter(delivery, reason="x")
    broker.publish(make_message(3), queue="q")
    [held] = receive_n(broker, "q", 1)
    broker.reserve_rate_slot("k", interval=1.0)
    broker.restore_expired()
    keys = {key.decode() for key in client.scan_iter(match=f"*{prefix[:-1]}*", count=1000)}
    assert keys
    assert all(key.startswith(prefix) for key in keys)
    broker.ack(held)


def test_fetch_writes_kombus_ack_emulation_entries(make_broker, client, prefix) -> None:
    broker = make_broker()
    broker.publish(make_message(1), queue="q")
    [raw] = client.lrange(f"{prefix}q", 0, -1)
    before = time.time()
    [delivery] = receive_n(broker, "q", 1)
    entry = json.loads(client.hget(f"{prefix}unacked", delivery.tag))
    assert entry == [json.loads(raw), "", "q"]
    score = client.zscore(f"{prefix}unacked_index", delivery.tag)
    assert score is not None
    assert before - 1 <= score <= time.time() + 1
    held = client.hget(f"{prefix}_celeriac.held.{broker.consumer_id}", delivery.tag)
    assert held is not None
    assert held.decode().endswith("|q")
    broker.ack(delivery)
    assert client.hget(f"{prefix}unacked", delivery.tag) is None
    assert client.zscore(f"{prefix}unacked_index", delivery.tag) is None
    assert not client.exists(f"{prefix}_celeriac.held.{broker.consumer_id}")


# -- no loss -----------------------------------------------------------------------------


def test_a_message_is_never_only_in_memory(make_broker, client, prefix) -> None:
    broker = make_broker()
    broker.publish_many([Outgoing(make_message(n), queue="q") for n in range(5)])
    got = receive_n(broker, "q", 5)
    # Popped and leased in the same step: every message is in Redis, in `unacked`.
    assert client.llen(f"{prefix}q") == 0
    assert client.hlen(f"{prefix}unacked") == 5
    assert {d.tag for d in got} == {t.decode() for t in client.hkeys(f"{prefix}unacked")}


def test_a_batch_is_taken_in_publish_order_from_each_list(make_broker, client, prefix) -> None:
    # A batch pushes each list's messages together (one LPUSH per list): the order
    # within a list is the publish order, as with one push per message.
    broker = make_broker()
    later = utcnow() + timedelta(hours=1)
    items = [Outgoing(make_message(n), queue="a" if n % 3 else "b") for n in range(30)]
    items.insert(7, Outgoing(make_message(99), queue="a", eta=later))
    items.append(Outgoing(make_message(100), queue="b", priority=9))
    broker.publish_many(items)
    assert client.zcard(f"{prefix}_celeriac.delayed.a") == 1
    assert [arg_of(d) for d in receive_n(broker, "a", 20)] == [n for n in range(30) if n % 3]
    from_b = [arg_of(d) for d in receive_n(broker, "b", 11)]
    assert from_b[:10] == [n for n in range(30) if not n % 3]
    assert from_b[10:] == [100]  # its own priority list
    assert broker.receive(["a", "b"], limit=10, timeout=0.2) == []


def test_hot_commands_store_what_they_were_given_and_refuse_what_redis_py_refuses(
    make_broker, client, prefix
) -> None:
    # The broker's hot commands are packed by hiredis directly (`connections.redis_packing._pack`).
    raw = make_broker()._redis.raw()
    values = {"float": 0.1, "int": -(2**63), "text": "caf\u00e9 \x00", "bytes": b"\xff\x00"}
    for name, value in values.items():
        assert raw.execute("SET", f"{prefix}{name}", value) == b"OK"
    assert client.get(f"{prefix}float") == b"0.1"
    assert client.get(f"{prefix}int") == b"-9223372036854775808"
    assert client.get(f"{prefix}text") == "caf\u00e9 \x00".encode()
    assert client.get(f"{prefix}bytes") == b"\xff\x00"
    with pytest.raises(redis.exceptions.DataError, match="cannot send 'SET'"):
        raw.execute("SET", f"{prefix}bool", True)
    # Nothing was written, and the connection is still in step with the server.
    assert not client.exists(f"{prefix}bool")
    assert raw.execute("GET", f"{prefix}float") == b"0.1"


def test_a_lost_fetch_reply_returns_the_same_batch_on_retry(
    make_broker, client, prefix, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = make_broker(connection_retry_backoff=0.01)
    broker.publish_many([Outgoing(make_message(n), queue="q") for n in range(3)])
    raw = broker._redis.raw()
    run_script = raw.script
    calls: list[int] = []

    def loses_first_reply(script: Any, keys: Any, args: Any) -> Any:
        reply = run_script(script, keys, args)  # the script ran on the server...
        calls.append(1)
        if len(calls) == 1:
            raise redis.exceptions.ConnectionError("reply lost")  # ...its reply did not
        return reply

    monkeypatch.setattr(raw, "script", loses_first_reply)
    got = broker.receive(["q"], limit=10, timeout=1)
    assert sorted(arg_of(d) for d in got) == [0, 1, 2]
    assert len(calls) == 2
    # Nothing was leased twice or stranded.
    assert client.hlen(f"{prefix}unacked") == 3
    broker.ack_many(got)
    assert client.hlen(f"{prefix}unacked") == 0


def test_a_message_without_delivery_tag_is_leased_not_lost(make_broker, client, prefix) -> None:
    broker = make_broker()
    client.lpush(f"{prefix}q", b"{not json")
    [delivery] = receive_n(broker, "q", 1)
    assert delivery.tag.startswith("celeriac-")
    assert client.hexists(f"{prefix}unacked", delivery.tag)
    broker.dead_letter(delivery, reason="malformed envelope")
    [dead] = broker.list_dead_letters()
    assert dead.reason == "malformed envelope"
    assert dead.message.body == b"{not json"


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


# -- leases ------------------------------------------------------------------------------


def test_lapsed_lease_is_restored_to_the_consuming_end_marked_redelivered(
    make_broker, client, prefix
) -> None:
    broker = make_broker(visibility_timeout=0.3)
    broker.publish(make_message(1), queue="q")
    [first] = receive_n(broker, "q", 1)
    broker.publish(make_message(2), queue="q")
    time.sleep(0.5)
    assert broker.restore_expired() == 1
    [_next_up, raw_old] = client.lrange(f"{prefix}q", 0, -1)
    restored = json.loads(raw_old)
    assert restored["headers"]["redelivered"] is True
    assert restored["properties"]["delivery_info"]["redelivered"] is True
    assert restored["properties"]["delivery_tag"] == first.tag
    [again] = broker.receive(["q"], limit=1, timeout=1)
    assert arg_of(again) == 1
    assert again.redelivered


def test_sweep_skips_while_another_sweeper_holds_the_mutex(make_broker, client, prefix) -> None:
    broker = make_broker(visibility_timeout=0.2)
    broker.publish(make_message(1), queue="q")
    receive_n(broker, "q", 1)
    time.sleep(0.3)
    client.set(f"{prefix}unacked_mutex", "someone", px=5000)
    assert broker.restore_expired() == 0
    client.delete(f"{prefix}unacked_mutex")
    assert broker.restore_expired() == 1


def test_a_renewed_lease_that_went_elsewhere_is_not_taken_back(make_broker) -> None:
    slow = make_broker("slow", visibility_timeout=0.2)
    fast = make_broker("fast", visibility_timeout=0.2)
    slow.publish(make_message(1), queue="q")
    [held] = receive_n(slow, "q", 1)
    time.sleep(0.3)
    fast.restore_expired()
    [taken] = receive_n(fast, "q", 1)
    slow.extend([held], seconds=10)
    time.sleep(0.3)
    # The slow consumer's renewal did not steal the lease back: fast's lapses and returns.
    assert fast.restore_expired() == 1
    assert taken.tag == held.tag


def test_recover_keeps_the_envelope_intact(make_broker, client, prefix) -> None:
    dead = make_broker("dead")
    alive = make_broker("alive")
    call = TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[1])
    call.stamped_headers = []
    call.headers = {"empty": [], "nested": {"inner": []}, "big": 2**62, "ratio": 0.1}
    dead.publish(encode_task(call), queue="q")
    [held] = receive_n(dead, "q", 1)
    assert alive.recover(dead.consumer_id, running=[held.tag]) == 1
    [back] = receive_n(alive, "q", 1)
    headers = back.message.headers
    assert headers["empty"] == []
    assert headers["nested"] == {"inner": []}
    assert headers["stamped_headers"] == []
    assert headers["big"] == 2**62
    assert headers["ratio"] == 0.1
    assert back.crashes == 1
    assert back.redelivered
    alive.recover(alive.consumer_id, running=[back.tag])
    [third] = receive_n(alive, "q", 1)
    assert third.crashes == 2
    alive.ack(third)
    assert not client.hexists(f"{prefix}_celeriac.crashes", third.tag)


def test_recover_leaves_messages_another_consumer_took_since(make_broker) -> None:
    dead = make_broker("dead", visibility_timeout=0.2)
    other = make_broker("other", visibility_timeout=0.2)
    dead.publish(make_message(1), queue="q")
    receive_n(dead, "q", 1)
    time.sleep(0.3)
    other.restore_expired()
    [taken] = receive_n(other, "q", 1)
    assert other.recover(dead.consumer_id) == 0
    assert other.receive(["q"], limit=1, timeout=0.2) == []
    other.ack(taken)


def test_requeue_many_puts_messages_at_the_consuming_end(make_broker) -> None:
    broker = make_broker()
    for n in range(3):
        broker.publish(make_message(n), queue="q")
    held = receive_n(broker, "q", 2)
    broker.requeue_many(held)
    order = [arg_of(d) for d in receive_n(broker, "q", 3)]
    assert order[2] == 2
    assert sorted(order[:2]) == [0, 1]


# -- dead letters and rate limits ------------------------------------------------------------


def test_dead_letters_record_queue_reason_and_time(make_broker, client, prefix) -> None:
    broker = make_broker()
    broker.publish(make_message(1), queue="q", priority=6)
    [delivery] = receive_n(broker, "q", 1)
    before = time.time()
    broker.dead_letter(delivery, reason="kept killing workers")
    assert not client.hexists(f"{prefix}unacked", delivery.tag)
    [dead] = broker.list_dead_letters()
    assert (dead.queue, dead.reason) == ("q", "kept killing workers")
    assert before - 1 <= dead.failed_at.timestamp() <= time.time() + 1
    assert dead.message.priority == 6
    assert broker.replay_dead_letter(dead.id)
    assert client.llen(f"{prefix}q{SEP}6") == 1
    [back] = receive_n(broker, "q", 1)
    assert back.tag != delivery.tag
    assert not back.redelivered


def test_rate_slots_are_evenly_spaced_across_processes(make_broker) -> None:
    brokers = [make_broker(f"c{n}") for n in range(4)]
    slots: list[float] = []
    lock = threading.Lock()

    def reserve(broker: RedisBroker) -> None:
        for _ in range(5):
            slot = broker.reserve_rate_slot("tests.echo", interval=0.5)
            with lock:
                slots.append(slot)

    threads = [threading.Thread(target=reserve, args=(b,)) for b in brokers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    slots.sort()
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert len(slots) == 20
    assert all(gap == pytest.approx(0.5, abs=1e-3) for gap in gaps)


# -- connections -----------------------------------------------------------------------------


def test_unreachable_server_raises_broker_connection_error() -> None:
    broker = RedisBroker(
        "redis://:secret@127.0.0.1:1/0",
        transport_options={"connection_retries": 2, "connection_retry_backoff": 0.01},
    )
    with pytest.raises(BrokerConnectionError, match="cannot reach Redis") as info:
        broker.publish(make_message(), queue="q")
    assert "secret" not in str(info.value)
    assert broker.safe_url() == "redis://:***@127.0.0.1:1/0"


def test_eviction_warning_is_none_on_a_noeviction_server(make_broker, client) -> None:
    policy = client.config_get("maxmemory-policy")["maxmemory-policy"]
    warning = make_broker().eviction_warning()
    if policy == "noeviction":
        assert warning is None
    else:
        assert warning is not None
        assert policy in warning


def test_closing_keeps_leases_held(make_broker, client, prefix) -> None:
    broker = make_broker()
    broker.publish(make_message(), queue="q")
    [held] = receive_n(broker, "q", 1)
    broker.close()
    assert client.hexists(f"{prefix}unacked", held.tag)
    wait_for(lambda: make_broker("x").recover(broker.consumer_id) == 1, timeout=5)


def test_with_no_celeriac_consumer_alive_an_eta_message_goes_to_its_list_as_kombu_puts_it(
    make_broker, client, prefix
) -> None:
    broker = make_broker()
    broker.withdraw(hand_off=True)
    eta = utcnow() + timedelta(seconds=30)
    message = make_message(1)
    message.headers["eta"] = eta.isoformat()
    broker.publish(message, queue="q", eta=eta)
    assert client.zcard(f"{prefix}_celeriac.delayed.q") == 0
    [raw] = client.lrange(f"{prefix}q", 0, -1)
    assert json.loads(raw)["headers"]["eta"] == eta.isoformat()


def test_the_last_consumer_to_withdraw_hands_the_delayed_set_to_the_lists(
    make_broker, client, prefix
) -> None:
    first, second = make_broker("c1"), make_broker("c2")
    eta = utcnow() + timedelta(seconds=30)
    first.publish(make_message(1), queue="q", eta=eta)
    first.publish(make_message(2, priority=9), queue="q", eta=eta + timedelta(seconds=1))
    assert client.zcard(f"{prefix}_celeriac.delayed.q") == 2
    first.withdraw(hand_off=True)
    # Another consumer is alive: it promotes them when due, they stay.
    assert client.zcard(f"{prefix}_celeriac.delayed.q") == 2
    second.withdraw()
    # A consumer leaving without shutting the worker down (a prefork child replaced)
    # hands nothing over: its replacement will promote them.
    assert client.zcard(f"{prefix}_celeriac.delayed.q") == 2
    second.heartbeat({"worker": "w@h"}, held=0, running=[], register=True)
    second.withdraw(hand_off=True)
    assert client.zcard(f"{prefix}_celeriac.delayed.q") == 0
    assert not client.zscore(f"{prefix}_celeriac.delayed", "q")
    assert client.llen(f"{prefix}q") == 1
    assert client.llen(f"{prefix}q\x06\x169") == 1


# -- depth (the dashboard's queue page) --------------------------------------------------


def test_depth_tells_ready_delayed_and_held_apart(make_broker) -> None:
    broker = make_broker()
    first, second, later = make_message(1), make_message(2), make_message(3)
    broker.publish(first, queue="q")
    broker.publish(second, queue="q")
    broker.publish(later, queue="q", eta=utcnow() + timedelta(hours=1))
    depth = broker.depth("q")
    assert (depth.ready, depth.delayed, depth.held) == (2, 1, 0)
    assert depth.oldest_id == first.headers["id"]
    [delivery] = broker.receive(["q"], limit=1, timeout=1.0)
    depth = broker.depth("q")
    assert (depth.ready, depth.delayed, depth.held) == (1, 1, 1)
    assert depth.oldest_id == second.headers["id"]
    broker.ack(delivery)
    assert broker.depth("q").held == 0
    assert broker.depth("other").held == 0
