"""A mixed fleet on one Redis queue: a stock Celery 5.7 worker and a celeriac worker
drain 2,000 tasks between them, every result correct, each worker doing part of the
work (every result names the implementation and process that ran it); then a chord
whose header both kinds of worker run joins exactly once."""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any

import pytest

from celeriac import chord, group
from tests.helpers import require_redis, unique
from tests.integration.conftest import RunWorker, import_tasks, write_tasks
from tests.integration.interop_redis import Shared, assert_no_errors, stock_worker

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.slow]

TASKS = 2000


@pytest.fixture
def shared() -> Iterator[Shared]:
    url = require_redis()
    name = unique("mf")
    place = Shared(url=url, prefix=f"{name}:", queue=name)
    yield place
    place.delete_keys()


def test_a_celery_and_a_celeriac_worker_share_one_queue(
    shared: Shared, tasks_dir: Path, run_worker: RunWorker
) -> None:
    write_tasks(tasks_dir, shared.celeriac_source())
    (tasks_dir / "stockproj.py").write_text(shared.celery_source())
    ours: Any = import_tasks(tasks_dir)
    try:
        with stock_worker(tasks_dir, "stockproj", "-P", "prefork", "-c", "2") as stock:
            celeriac = run_worker("-c", "2")
            stock_pids = set(stock.children())
            our_pids = set(celeriac.children())
            started = time.monotonic()
            result = group(ours.double.s(n) for n in range(TASKS))()
            values = result.get(timeout=120)
            elapsed = time.monotonic() - started
            # A chord whose parts both kinds of worker run joins once, whoever ends it.
            joined = chord(ours.double.s(n) for n in range(200))(ours.collect.s())
            summary = joined.get(timeout=60)
            stock.assert_healthy()
        assert_no_errors(celeriac.output())
    finally:
        ours.app.close()
    assert [v["value"] for v in values] == [2 * n for n in range(TASKS)]
    by_impl = collections.Counter(v["impl"] for v in values)
    pids = collections.defaultdict(set)
    for value in values:
        pids[value["impl"]].add(value["pid"])
    print(f"\n{TASKS} tasks in {elapsed:.2f} s: {dict(by_impl)}, processes {dict(pids)}")
    assert set(by_impl) == {"celery", "celeriac"}
    assert pids["celery"] <= stock_pids
    assert pids["celeriac"] <= our_pids
    assert summary["total"] == sum(2 * n for n in range(200))
    assert summary["impls"] == ["celeriac", "celery"]
    assert summary["runs"] == 1
