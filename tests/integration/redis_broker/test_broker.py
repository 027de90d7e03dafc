"""Redis broker behaviour beyond the contract: kombu's exact layout, the no-loss fetch,
leases, dead letters, rate slots, connections and depth. Needs the shared Redis; every
test works under its own key prefix and deletes its keys afterwards."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
import redis

from celeriac._time import utcnow
from celeriac.brokers.base import Outgoing
from celeriac.brokers.redis import RedisBroker
from celeriac.exceptions import BrokerConnectionError
from celeriac.protocol.codec import TaskCall, encode_task
from tests.helpers import wait_for
from tests.integration.redis_broker.messages import SEP, arg_of, make_message, receive_n

pytestmark = pytest.mark.redis


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
