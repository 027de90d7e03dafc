"""`RedisBackend.recent` on the shared Redis (only this app's keys, a prefix read
literally, the cap on keys read), and a fresh dashboard's search finding what a worker
stored there before it started."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest
from starlette.testclient import TestClient

from celeriac import Celeriac, states
from celeriac.backends import redis as redis_backend
from celeriac.backends.base import ResultMeta
from celeriac.backends.redis import RedisBackend
from celeriac.dashboard import create_app
from celeriac.dashboard.feed import EventFeed
from celeriac.testing import TestWorker
from tests.helpers import delete_redis_keys, require_redis, unique

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = unique("p")
    yield name
    delete_redis_keys(require_redis(), name)


def _store(backend: RedisBackend, count: int) -> list[str]:
    base = datetime.now(timezone.utc).replace(microsecond=0)
    ids = [unique("r") for _ in range(count)]
    for offset, task_id in enumerate(ids):
        backend.store(
            ResultMeta(
                task_id=task_id,
                status=states.SUCCESS,
                date_done=base + timedelta(seconds=offset),
                name="tasks.add",
            )
        )
    return ids


def test_recent_reads_only_this_prefix_literally(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = require_redis()
    # A glob character in the prefix must not widen the match to the other app's keys.
    mine = RedisBackend(url, transport_options={"global_keyprefix": f"{prefix}[*]:"})
    other = RedisBackend(url, transport_options={"global_keyprefix": f"{prefix}[a]:"})
    try:
        ids = _store(mine, 5)
        _store(other, 2)
        newest = mine.recent(3)
        assert [meta.task_id for meta in newest] == ids[::-1][:3]
        assert newest[0].name == "tasks.add"
        assert {meta.task_id for meta in mine.recent(100)} == set(ids)
        monkeypatch.setattr(redis_backend, "RECENT_KEYS_READ", 2)
        assert len(mine.recent(100)) == 2
    finally:
        mine.close()
        other.close()


def test_a_fresh_dashboard_finds_what_a_worker_stored_before(prefix: str) -> None:
    app = Celeriac("tests", broker=f"memory://{prefix}", backend=require_redis())
    app.conf.result_backend_transport_options = {"global_keyprefix": f"{prefix}:"}
    app.conf.result_extended = True

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def fail() -> None:
        raise ValueError("no")

    worker = TestWorker(app).start()
    try:
        added = add.delay(1, 2)
        failed = fail.delay()
        added.get(timeout=10)
        failed.get(timeout=10, propagate=False)
    finally:
        worker.stop()
    # A dashboard started now: its events feed has seen nothing.
    with TestClient(create_app(app, feed=EventFeed(app))) as client:
        by_name = client.get("/tasks?name=add&state=SUCCESS").text
        by_state = client.get("/tasks?state=FAILURE").text
    assert f'data-id="{added.id}"' in by_name
    assert f'data-id="{failed.id}"' not in by_name
    assert f'data-id="{failed.id}"' in by_state
    assert f'data-id="{added.id}"' not in by_state
