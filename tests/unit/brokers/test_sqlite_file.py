"""The SQLite broker's file beyond the shared contract: URLs, file and schema, concurrency
and locks."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from celeriac.brokers import create_broker
from celeriac.brokers.sqlite import SQLiteBroker
from celeriac.exceptions import (
    BrokerConnectionError,
    BrokerError,
    ImproperlyConfigured,
)
from tests.unit.brokers.sqlite_messages import make_message

if TYPE_CHECKING:
    from pathlib import Path


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
