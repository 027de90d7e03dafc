"""The SQLite broker's rate slots, size and purge, and the one-statement/one-transaction
promises."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from celeriac._time import FakeClock, utcnow
from celeriac.brokers.base import Outgoing
from celeriac.exceptions import (
    BrokerError,
    PublishError,
)
from tests.unit.brokers.sqlite_messages import make_message, statements_of

if TYPE_CHECKING:
    from pathlib import Path


# -- rate slots ------------------------------------------------------------------------


def test_rate_slots_are_evenly_spaced_across_threads(make: Any) -> None:
    slots: list[float] = []
    lock = threading.Lock()

    def reserve() -> None:
        broker = make(f"c-{threading.get_ident()}")
        for _ in range(10):
            slot = broker.reserve_rate_slot("tasks.fetch", interval=1.0)
            with lock:
                slots.append(slot)

    threads = [threading.Thread(target=reserve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    slots.sort()
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert len(slots) == 40
    assert all(gap == pytest.approx(1.0, abs=1e-6) for gap in gaps)


def test_a_rate_slot_after_a_quiet_spell_starts_now(make: Any) -> None:
    clock = FakeClock(time.time())
    broker = make(clock=clock)
    first = broker.reserve_rate_slot("k", interval=0.1)
    clock.advance(0.3)
    second = broker.reserve_rate_slot("k", interval=0.1)
    assert second - first >= 0.25
    assert abs(second - clock.time()) < 0.1


# -- size, purge and the one-transaction promises --------------------------------------


def test_size_counts_ready_and_delayed_but_not_leased(make: Any) -> None:
    broker = make()
    for n in range(3):
        broker.publish(make_message(n), queue="q")
    broker.publish(make_message(9), queue="q", eta=utcnow() + timedelta(hours=1))
    broker.publish(make_message(7), queue="other")
    broker.receive(["q"], limit=2, timeout=1)
    assert broker.size("q") == 2
    assert broker.purge("q") == 2
    assert broker.size("q") == 0
    assert broker.size("other") == 1


def test_purge_leaves_leased_messages_to_their_holder(make: Any) -> None:
    broker = make()
    broker.publish(make_message(1), queue="q")
    [held] = broker.receive(["q"], limit=1, timeout=1)
    assert broker.purge("q") == 0
    broker.reject(held, requeue=True)
    assert broker.size("q") == 1


def test_publish_many_is_all_or_nothing(make: Any, tmp_path: Path) -> None:
    broker = make()
    broker.connect()
    sqlite3.connect(tmp_path / "broker.db").executescript(
        "CREATE TRIGGER refuse BEFORE INSERT ON message WHEN NEW.queue = 'refused' "
        "BEGIN SELECT RAISE(ABORT, 'refused by test'); END;"
    )
    items = [Outgoing(make_message(n), queue="q") for n in range(5)]
    with pytest.raises(PublishError, match="refused by test"):
        broker.publish_many([*items, Outgoing(make_message(9), queue="refused")])
    assert broker.size("q") == 0
    broker.publish_many(items)
    assert broker.size("q") == 5


def test_ack_many_is_one_transaction(make: Any, tmp_path: Path) -> None:
    broker = make()
    for n in range(4):
        broker.publish(make_message(n), queue="q")
    held = broker.receive(["q"], limit=4, timeout=1)
    sqlite3.connect(tmp_path / "broker.db").executescript(
        f"CREATE TRIGGER keep BEFORE DELETE ON message WHEN OLD.id = {held[-1].handle[0]} "
        "BEGIN SELECT RAISE(ABORT, 'kept by test'); END;"
    )
    with pytest.raises(BrokerError, match="kept by test"):
        broker.ack_many(held)
    with broker._db.use() as connection:
        assert connection.execute("SELECT count(*) FROM message").fetchone() == (4,)


def test_hot_paths_are_one_statement_or_one_transaction(make: Any) -> None:
    broker = make()
    broker.connect()
    seen = statements_of(broker)
    broker.publish(make_message(1), queue="q")
    assert len(seen) == 1
    assert seen[0].startswith("INSERT")
    broker.publish_many([Outgoing(make_message(n), queue="q") for n in range(50)])
    seen.clear()
    batch = broker.receive(["q"], limit=40, timeout=1)
    assert len(batch) == 40
    # BEGIN, promote due rows, lease the whole batch with RETURNING, COMMIT.
    assert [s.split()[0] for s in seen] == ["BEGIN", "UPDATE", "UPDATE", "COMMIT"]
    seen.clear()
    broker.ack(batch[0])
    assert [s.split()[0] for s in seen] == ["DELETE"]
    seen.clear()
    broker.ack_many(batch[1:])
    assert [s.split()[0] for s in seen] == ["BEGIN"] + ["DELETE"] * 39 + ["COMMIT"]


def test_stats_count_this_objects_traffic(make: Any) -> None:
    broker = make()
    for n in range(3):
        broker.publish(make_message(n), queue="q")
    held = broker.receive(["q"], limit=3, timeout=1)
    broker.ack(held[0])
    broker.reject(held[1], requeue=False)
    stats = broker.stats()
    assert (stats.transport, stats.published, stats.received) == ("sqlite", 3, 3)
    assert (stats.acked, stats.rejected) == (1, 1)


def test_idle_receive_does_not_query_in_a_loop(make: Any) -> None:
    broker = make()
    broker.connect()
    seen = statements_of(broker)
    assert broker.receive(["q"], limit=1, timeout=0.5) == []
    # One lease attempt, then one look after the watcher's first reading; no polling.
    assert len(seen) <= 8


def test_a_row_with_headers_that_are_not_json_is_handed_out_to_be_dead_lettered(
    make: Any, tmp_path: Path
) -> None:
    broker = make()
    broker.declare("q")
    broker.publish(make_message(1), queue="q")
    # A row written by something else than celeriac, its headers column corrupt.
    with sqlite3.connect(tmp_path / "broker.db") as connection:
        connection.execute(
            "INSERT INTO message (queue, priority, due, exchange, routing_key, content_type, "
            "content_encoding, headers, properties, body) "
            "VALUES ('q', 0, NULL, '', 'q', 'application/json', 'utf-8', ?, ?, ?)",
            (b"{not json", b'{"correlation_id": "abc"}', b"[[2], {}, {}]"),
        )
    connection.close()
    deliveries = broker.receive(["q"], limit=10, timeout=0)
    assert len(deliveries) == 2
    bad = deliveries[1]
    assert bad.message.content_type == "application/x-invalid-envelope"
    assert bad.message.properties == {"correlation_id": "abc"}
    broker.dead_letter(bad, reason="invalid")
    assert [d.reason for d in broker.list_dead_letters()] == ["invalid"]
