"""`celeriac.connections.sqlite_watch`: the change watcher wakes waiters on a commit."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import TYPE_CHECKING

import pytest

from celeriac.connections.sqlite_watch import ChangeWatcher
from tests.helpers import wait_for

if TYPE_CHECKING:
    from pathlib import Path

    from celeriac.connections.sqlite import Database


class ParkWatch(threading.Condition):
    """The watcher's condition, telling when its poller parks (waits with no timeout)
    and when it wakes up from there."""

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self.parked = threading.Event()
        self.woke = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is not None:
            return super().wait(timeout)
        self.woke.clear()
        self.parked.set()
        try:
            return super().wait(timeout)
        finally:
            self.parked.clear()
            self.woke.set()


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

    condition = ParkWatch(threading.Lock())
    monkeypatch.setattr(watcher, "_condition", condition)
    monkeypatch.setattr(watcher, "_read_version", counting)
    watcher.wait(watcher.token(), 0.3)
    watcher.wait(watcher.token(), 0.3)
    assert reads >= 5  # it polled while somebody waited
    wait_for(condition.parked.is_set, timeout=5, what="the poller to park")
    parked = reads
    assert not condition.woke.wait(0.5)  # nothing wakes the parked poller ...
    assert reads == parked  # ... and it reads nothing meanwhile


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
