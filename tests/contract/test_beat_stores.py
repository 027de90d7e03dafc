"""One suite over every beat store (memory, SQLite, Redis): the lease, the claim that
ties a tick to its send, and reconciliation, each atomic for every process on the store.

Two store objects on one server stand for two beat processes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from celeriac.beat.store import EntryState, MemoryScheduleStore, ScheduleStore
from tests.helpers import require_redis, unique, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


@pytest.fixture(params=["memory", "sqlite", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], ScheduleStore]]:
    """Make store objects that share one schedule's state; removed afterwards."""
    kind: str = request.param
    name = unique("beat")
    made: list[ScheduleStore] = []
    shared = MemoryScheduleStore(name)
    redis_url = None

    def make() -> ScheduleStore:
        store: ScheduleStore
        if kind == "memory":
            store = shared
        elif kind == "sqlite":
            from celeriac.beat.sqlite_store import SQLiteScheduleStore

            store = SQLiteScheduleStore(f"sqlite:///{tmp_path / 'beat.db'}", {}, name=name)
        else:
            from celeriac.beat.redis_store import RedisScheduleStore

            store = RedisScheduleStore(redis_url or "", {"global_keyprefix": f"{name}:"}, name=name)
        made.append(store)
        return store

    if kind == "redis":
        redis_url = require_redis()
    yield make
    for store in made:
        store.close()
    if redis_url is not None:
        import redis

        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{name}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_one_holder_at_a_time_with_rising_tokens(stores):
    first, second = stores(), stores()
    lease = first.acquire("a", seconds=30)
    assert lease.held_by("a")
    assert lease.token >= 1
    other = second.acquire("b", seconds=30)
    assert second.leader() == "a"
    assert not other.held_by("b")
    assert other.holder == "a"
    assert 0 < other.remaining <= 30
    assert first.acquire("a", seconds=30).token == lease.token  # a renewal keeps the token
    first.release("a")
    assert second.leader() is None
    taken = second.acquire("b", seconds=30)
    assert taken.held_by("b")
    assert taken.token > lease.token


def test_a_lapsed_lease_goes_to_the_next_caller(stores):
    first, second = stores(), stores()
    assert first.acquire("a", seconds=0.2).held_by("a")
    won = wait_for(lambda: second.acquire("b", seconds=30).held_by("b"), timeout=5)
    assert won
    assert first.reconcile("a", 1, {"x": "fp"}, now=1) is None


def test_reconcile_adds_updates_and_removes_entries(stores):
    store = stores()
    token = store.acquire("a", seconds=30).token
    states = store.reconcile("a", token, {"x": "fp1", "y": "fp1"}, now=1_000)
    assert states == {"x": EntryState("fp1", 1_000), "y": EntryState("fp1", 1_000)}
    assert store.claim("a", token, "x", last_run=1_000, tick=2_000, task_id="id") == "claimed"
    store.confirm("x", 2_000)
    states = store.reconcile("a", token, {"x": "fp2", "z": "fp1"}, now=5_000)
    assert states == {"x": EntryState("fp2", 2_000), "z": EntryState("fp1", 5_000)}
    assert stores().load() == states


def test_a_tick_is_claimed_once(stores):
    first, second = stores(), stores()
    token = first.acquire("a", seconds=30).token
    first.reconcile("a", token, {"x": "fp"}, now=1_000)
    assert first.claim("a", token, "x", last_run=1_000, tick=2_000, task_id="t1") == "claimed"
    assert first.claim("a", token, "x", last_run=1_000, tick=2_000, task_id="t1") == "pending"
    state = second.load()["x"]
    assert (state.pending_tick, state.pending_task_id) == (2_000, "t1")
    first.confirm("x", 2_000)
    first.confirm("x", 2_000)  # idempotent
    assert second.load()["x"] == EntryState("fp", 2_000)
    assert first.claim("a", token, "x", last_run=1_000, tick=2_000, task_id="t1") == "done"
    assert first.claim("a", token, "gone", last_run=1_000, tick=2_000, task_id="t") == "gone"


def test_a_replaced_leader_cannot_claim(stores):
    first, second = stores(), stores()
    old = first.acquire("a", seconds=0.2).token
    first.reconcile("a", old, {"x": "fp"}, now=1_000)
    time.sleep(0.3)
    new = second.acquire("b", seconds=30).token
    assert new > old
    assert first.claim("a", old, "x", last_run=1_000, tick=2_000, task_id="t") == "fenced"
    assert second.claim("b", new, "x", last_run=1_000, tick=2_000, task_id="t") == "claimed"


def test_only_the_current_leader_may_resend_a_pending_claim(stores):
    first, second = stores(), stores()
    old = first.acquire("a", seconds=0.2).token
    first.reconcile("a", old, {"x": "fp"}, now=1_000)
    assert first.claim("a", old, "x", last_run=1_000, tick=2_000, task_id="t") == "claimed"
    assert first.resume("a", old, "x", tick=2_000)
    assert not first.resume("a", old, "x", tick=3_000)
    time.sleep(0.3)
    new = second.acquire("b", seconds=30).token
    assert not first.resume("a", old, "x", tick=2_000)
    assert second.resume("b", new, "x", tick=2_000)
