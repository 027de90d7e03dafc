"""The SQLite broker beyond the shared contract: URLs, file and schema, leases, priorities,
ETA, dead letters, rate slots and the one-statement/one-transaction promises."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from celeriac._time import UTC, FakeClock, utcnow
from celeriac.brokers import create_broker
from celeriac.brokers.base import Delivery, Outgoing
from celeriac.brokers.sqlite import SQLiteBroker
from celeriac.exceptions import (
    BrokerConnectionError,
    BrokerError,
    ImproperlyConfigured,
    PublishError,
)
from celeriac.protocol.codec import TaskCall, decode_task, encode_task

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from celeriac.protocol.message import Message

ACCEPT = frozenset({"application/json"})


def make_message(n: int = 0, **headers: Any) -> Message:
    call = TaskCall(name="tests.echo", id=str(uuid.uuid4()), args=[n])
    call.headers = dict(headers)
    return encode_task(call)


def arg_of(delivery: Delivery) -> Any:
    return decode_task(delivery.message, accept=ACCEPT).args[0]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.db'}"


@pytest.fixture
def brokers(url: str) -> Iterator[list[SQLiteBroker]]:
    made: list[SQLiteBroker] = []
    yield made
    for broker in made:
        broker.close()


@pytest.fixture
def make(url: str, brokers: list[SQLiteBroker]) -> Any:
    def factory(
        consumer_id: str = "consumer-a", *, clock: FakeClock | None = None, **options: Any
    ) -> SQLiteBroker:
        broker = SQLiteBroker(url, transport_options=options, consumer_id=consumer_id, clock=clock)
        brokers.append(broker)
        return broker

    return factory


def statements_of(broker: SQLiteBroker) -> list[str]:
    """Record every statement this thread's connection runs from now on."""
    seen: list[str] = []
    with broker._db.use() as connection:
        connection.set_trace_callback(seen.append)
    return seen


# -- URLs, file and schema -------------------------------------------------------------


def test_relative_url_creates_the_file_in_the_current_directory_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    broker = create_broker("sqlite:///data/queue.db")
    assert isinstance(broker, SQLiteBroker)
    assert not (tmp_path / "data" / "queue.db").exists()
    try:
        broker.publish(make_message(), queue="q")
        assert (tmp_path / "data" / "queue.db").is_file()
        assert broker.size("q") == 1
    finally:
        broker.close()


def test_absolute_url_takes_four_slashes(tmp_path: Path) -> None:
    path = tmp_path / "abs.db"
    broker = SQLiteBroker(f"sqlite:///{path}")  # tmp_path starts with "/": four slashes
    try:
        broker.connect()
        tables = {
            name for (name,) in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")
        }
    finally:
        broker.close()
    assert {"message", "dead_letter", "rate_slot"} <= tables


def test_the_file_is_in_wal_mode(url: str, make: Any, tmp_path: Path) -> None:
    make().connect()
    mode = sqlite3.connect(tmp_path / "broker.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


@pytest.mark.parametrize(
    ("bad", "hint"),
    [
        ("sqlite://", "names no database file"),
        ("sqlite:///", "names no database file"),
        ("sqlite://localhost/queue.db", "names a host"),
        ("sqlite:///queue.db?timeout=5", "transport_options"),
        ("sqlite:///:memory:", "memory://"),
    ],
)
def test_a_bad_url_says_what_to_write_instead(bad: str, hint: str) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        SQLiteBroker(bad)
    assert hint in str(info.value)
    assert "sqlite:///celeriac.db" in str(info.value)


def test_a_missing_directory_is_reported_with_the_fix(tmp_path: Path) -> None:
    broker = SQLiteBroker(f"sqlite:///{tmp_path / 'nowhere' / 'queue.db'}")
    with pytest.raises(ImproperlyConfigured) as info:
        broker.publish(make_message(), queue="q")
    message = str(info.value)
    assert "does not exist" in message
    assert "mkdir -p" in message
    assert not (tmp_path / "nowhere").exists()


def test_a_directory_instead_of_a_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ImproperlyConfigured, match="is a directory"):
        SQLiteBroker(f"sqlite:///{tmp_path}").connect()


def test_bad_transport_options_are_refused(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="synchronous"):
        SQLiteBroker(url, transport_options={"synchronous": "sometimes"})
    with pytest.raises(ImproperlyConfigured, match="polling_interval"):
        SQLiteBroker(url, transport_options={"polling_interval": "soon"})
    with pytest.raises(ImproperlyConfigured, match="visibility_timeout"):
        SQLiteBroker(url, transport_options={"visibility_timeout": 0})


def test_a_file_that_is_not_a_database_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an sqlite file" * 100)
    broker = SQLiteBroker(f"sqlite:///{path}")
    with pytest.raises(ImproperlyConfigured, match="is not an SQLite database") as info:
        broker.publish(make_message(), queue="q")
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


def test_driver_errors_come_out_as_broker_errors(make: Any, tmp_path: Path) -> None:
    broker = make()
    broker.connect()
    sqlite3.connect(tmp_path / "broker.db").executescript("DROP TABLE rate_slot;")
    with pytest.raises(BrokerError, match="no such table: rate_slot") as info:
        broker.reserve_rate_slot("k", interval=1)
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)


# -- concurrency and locks -------------------------------------------------------------


def test_busy_timeout_waits_for_another_writer(make: Any, tmp_path: Path) -> None:
    broker = make(busy_timeout=10)
    broker.connect()
    other = sqlite3.connect(tmp_path / "broker.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # hold the write lock like a busy process would
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    try:
        started = time.monotonic()
        broker.publish(make_message(), queue="q")
        waited = time.monotonic() - started
    finally:
        release.cancel()
        release.join()
        other.close()
    assert waited >= 0.2
    assert broker.size("q") == 1


def test_a_lock_held_past_busy_timeout_raises_a_connection_error(make: Any, tmp_path: Path) -> None:
    broker = make(busy_timeout=0.2)
    broker.connect()
    other = sqlite3.connect(tmp_path / "broker.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BrokerConnectionError, match="busy_timeout"):
            broker.publish(make_message(), queue="q")
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_each_thread_gets_its_own_connection(make: Any) -> None:
    broker = make()
    connections: list[sqlite3.Connection] = []
    lock = threading.Lock()

    def publish(worker: int) -> None:
        for n in range(100):
            broker.publish(make_message(worker * 1000 + n), queue="q")
        with broker._db.use() as connection, lock:
            connections.append(connection)

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len({id(connection) for connection in connections}) == 8
    assert broker.size("q") == 800


def test_a_pid_change_opens_a_new_connection_and_leaves_the_old_one_alone(make: Any) -> None:
    broker = make()
    broker.publish(make_message(1), queue="q")
    slot = broker._db._slot()
    slot.pid = -1  # as if this object had been carried into a forked child
    broker.publish(make_message(2), queue="q")
    fresh = broker._db._slot()
    assert fresh is not slot
    # The inherited connection was not closed (that would drop the parent's locks).
    assert slot.connection.execute("SELECT 1").fetchone() == (1,)
    assert broker.size("q") == 2


def test_close_then_use_reconnects(make: Any) -> None:
    broker = make()
    broker.publish(make_message(1), queue="q")
    broker.close()
    broker.publish(make_message(2), queue="q")
    assert broker.size("q") == 2


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
