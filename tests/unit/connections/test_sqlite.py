"""`celeriac.connections.sqlite`: URL parsing, per-thread connections and fork safety."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from celeriac.connections import sqlite as _sqlite
from celeriac.connections.sqlite import Database, parse_sqlite_url
from celeriac.exceptions import BackendError, ImproperlyConfigured


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


def test_a_new_database_and_its_wal_files_are_private_to_their_owner(
    database: Database, tmp_path: Path
) -> None:
    with database.transaction() as connection:
        connection.execute("INSERT INTO t VALUES (1)")
    for name in ("t.db", "t.db-wal", "t.db-shm"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name


def test_an_existing_database_keeps_the_mode_its_owner_gave_it(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    path.touch()
    path.chmod(0o640)
    shared = Database(path, schema="CREATE TABLE IF NOT EXISTS t (x INTEGER)", error=BackendError)
    try:
        with shared.transaction() as connection:
            connection.execute("INSERT INTO t VALUES (1)")
    finally:
        shared.close()
    assert path.stat().st_mode & 0o777 == 0o640
