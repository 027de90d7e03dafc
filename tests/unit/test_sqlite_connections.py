"""`celeriac.connections.sqlite`: URL parsing, per-thread connections and the change watcher."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from celeriac.connections import sqlite as _sqlite
from celeriac.connections.sqlite import Database, parse_sqlite_url
from celeriac.connections.sqlite_watch import ChangeWatcher
from celeriac.exceptions import BackendError, ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Iterator


def test_three_slashes_are_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_sqlite_url("sqlite:///celeriac.db") == tmp_path / "celeriac.db"
    assert parse_sqlite_url("sqlite:///sub/dir/q.db") == tmp_path / "sub" / "dir" / "q.db"


def test_four_slashes_are_absolute() -> None:
    assert parse_sqlite_url("sqlite:////var/lib/celeriac/q.db") == Path("/var/lib/celeriac/q.db")


def test_percent_escapes_are_decoded(tmp_path: Path) -> None:
    assert parse_sqlite_url(f"sqlite:///{tmp_path}/my%20queue.db") == tmp_path / "my queue.db"


def test_a_relative_path_does_not_move_with_a_later_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = parse_sqlite_url("sqlite:///q.db")
    monkeypatch.chdir("/")
    assert path == tmp_path / "q.db"


@pytest.mark.parametrize(
    "url",
    ["redis://localhost/0", "sqlite:", "sqlite:///dir/", "sqlite:///file:q.db?mode=memory"],
)
def test_urls_that_name_no_file_are_refused(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"sqlite:////absolute/path/celeriac\.db"):
        parse_sqlite_url(url)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(
        tmp_path / "t.db", schema="CREATE TABLE IF NOT EXISTS t (x INTEGER)", error=BackendError
    )
    yield db
    db.close()


def test_close_closes_every_threads_connection(database: Database) -> None:
    opened: list[sqlite3.Connection] = []
    ready = threading.Barrier(4)
    finish = threading.Event()

    def use() -> None:
        with database.use() as connection:
            opened.append(connection)
        ready.wait(10)
        finish.wait(10)  # alive, holding its connection, while close() runs

    threads = [threading.Thread(target=use) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        with database.use() as connection:
            opened.append(connection)
        ready.wait(10)
        database.close()
        for connection in opened:
            with pytest.raises(sqlite3.ProgrammingError):
                connection.execute("SELECT 1")
        with database.use() as connection:  # and the next use reconnects
            assert connection.execute("SELECT count(*) FROM t").fetchone() == (0,)
    finally:
        finish.set()
        for thread in threads:
            thread.join(10)


def test_a_failed_transaction_is_rolled_back(database: Database) -> None:
    def insert_then_fail() -> None:
        with database.transaction() as connection:
            connection.execute("INSERT INTO t VALUES (1)")
            connection.execute("INSERT INTO nowhere VALUES (1)")

    with pytest.raises(BackendError, match="no such table: nowhere"):
        insert_then_fail()
    with database.use() as connection:
        assert connection.execute("SELECT count(*) FROM t").fetchone() == (0,)
        assert not connection.in_transaction


@pytest.fixture
def watcher(database: Database) -> ChangeWatcher:
    database.connect()
    return ChangeWatcher(database.path, interval=0.01)


def commit_from_elsewhere(path: Path) -> None:
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("INSERT INTO t VALUES (1)")
    connection.close()


def test_the_watcher_wakes_a_waiter_on_a_commit_by_another_connection(
    watcher: ChangeWatcher, database: Database
) -> None:
    watcher.wait(watcher.token(), 1)  # the first reading counts as a change
    token = watcher.token()
    timer = threading.Timer(0.3, commit_from_elsewhere, args=(database.path,))
    timer.start()
    try:
        started = time.monotonic()
        assert watcher.wait(token, 5)
        waited = time.monotonic() - started
    finally:
        timer.cancel()
        timer.join()
    assert 0.25 <= waited < 1.5


def test_a_commit_between_the_token_and_the_wait_is_not_missed(
    watcher: ChangeWatcher, database: Database
) -> None:
    # Let the watcher settle on a reading first.
    assert watcher.wait(watcher.token(), 1)
    assert not watcher.wait(watcher.token(), 0.1)
    token = watcher.token()
    commit_from_elsewhere(database.path)
    started = time.monotonic()
    assert watcher.wait(token, 5)
    assert time.monotonic() - started < 1


def test_the_watcher_times_out_without_changes(watcher: ChangeWatcher) -> None:
    watcher.wait(watcher.token(), 1)  # the first reading counts as a change
    started = time.monotonic()
    assert not watcher.wait(watcher.token(), 0.3)
    assert time.monotonic() - started >= 0.25


def test_the_watcher_stops_reading_when_nobody_waits(
    watcher: ChangeWatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = 0
    original = watcher._read_version

    def counting() -> tuple[int, bool]:
        nonlocal reads
        reads += 1
        return original()

    monkeypatch.setattr(watcher, "_read_version", counting)
    watcher.wait(watcher.token(), 0.3)
    watcher.wait(watcher.token(), 0.3)
    assert reads >= 5  # it polled while somebody waited
    time.sleep(0.1)  # let it finish the poll in flight and park
    parked = reads
    time.sleep(0.5)
    assert reads == parked


def test_an_endless_timeout_waits_for_the_change(
    watcher: ChangeWatcher, database: Database
) -> None:
    watcher.wait(watcher.token(), 1)
    token = watcher.token()
    timer = threading.Timer(0.2, commit_from_elsewhere, args=(database.path,))
    timer.start()
    try:
        assert watcher.wait(token, float("inf"))
    finally:
        timer.cancel()
        timer.join()


def test_the_fork_hooks_close_connections_and_the_next_use_reopens(database: Database) -> None:
    with database.use() as before:
        pass
    _sqlite._before_fork()  # what os.fork() runs first ...
    try:
        with pytest.raises(sqlite3.ProgrammingError):
            before.execute("SELECT 1")  # closed: nothing open is copied into the child
    finally:
        _sqlite._after_fork_in_parent()  # ... and after, in the parent
    with database.use() as after:
        assert after is not before
        assert after.execute("SELECT count(*) FROM t").fetchone() == (0,)
