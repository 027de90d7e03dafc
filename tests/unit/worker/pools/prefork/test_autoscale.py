"""The prefork pool's size: `--autoscale` parsing and Celery's scaling rule, on a fake clock."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from celeriac.exceptions import ImproperlyConfigured
from celeriac.worker.options import WorkerOptions
from celeriac.worker.pools.prefork.autoscale import (
    MAX_CHILDREN,
    PoolSize,
    keepalive_from_env,
    parse_autoscale,
)

if TYPE_CHECKING:
    from celeriac import Celeriac


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10,3", (10, 3)), ("3,10", (10, 3)), ("10", (10, 0)), (" 4 , 2", (4, 2))],
)
def test_autoscale_is_read_as_celery_reads_it(text: str, expected: tuple[int, int]) -> None:
    assert parse_autoscale(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ten", "whole numbers"),
        ("1,2,3", "two numbers at most"),
        ("0", "max must be at least 1"),
        (f"{MAX_CHILDREN + 1},1", f"at most {MAX_CHILDREN}"),
        ("4,-1", "min must be 0 or more"),
    ],
)
def test_bad_autoscale_values_are_refused_by_name(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_autoscale(text)


def test_keepalive_comes_from_celerys_environment_variable() -> None:
    assert keepalive_from_env({}) == 30.0
    assert keepalive_from_env({"AUTOSCALE_KEEPALIVE": "1.5"}) == 1.5
    with pytest.raises(ValueError, match="AUTOSCALE_KEEPALIVE"):
        keepalive_from_env({"AUTOSCALE_KEEPALIVE": "soon"})


def test_the_pool_starts_at_min_and_never_below_one_child() -> None:
    assert PoolSize(8, autoscale=(10, 3)).wanted() == 3
    assert PoolSize(8, autoscale=(10, 0)).wanted() == 1


def test_load_grows_the_pool_at_once_up_to_max() -> None:
    size = PoolSize(1, autoscale=(6, 1), clock=Clock())
    assert size.observe(processes=1, qty=4, received=4) == 4
    assert size.observe(processes=4, qty=40, received=40) == 6


def test_idleness_shrinks_the_pool_only_after_the_keepalive() -> None:
    clock = Clock()
    size = PoolSize(1, autoscale=(6, 2), keepalive=2.0, clock=clock)
    size.observe(processes=2, qty=6, received=6)
    clock.now += 1
    assert size.observe(processes=6, qty=0, received=12) == 6  # work came in just now
    clock.now += 1.5
    assert size.observe(processes=6, qty=0, received=12) == 6  # not idle long enough
    clock.now += 1
    assert size.observe(processes=6, qty=0, received=12) == 2
    assert size.info() == {"max": 6, "min": 2, "current": 6, "qty": 0}


def test_new_work_cancels_a_pending_shrink() -> None:
    clock = Clock()
    size = PoolSize(1, autoscale=(6, 1), keepalive=1.0, clock=clock)
    size.observe(processes=4, qty=0, received=0)
    clock.now += 5
    assert size.observe(processes=4, qty=0, received=0) == 1
    # Only idle children are retired: the busy ones are still there when work returns.
    assert size.observe(processes=3, qty=2, received=2) == 3


def test_update_moves_the_target_into_the_new_range() -> None:
    size = PoolSize(1, autoscale=(6, 1))
    assert size.update(8, 3) == (8, 3)
    assert size.wanted() == 3
    assert size.update(None, 1) == (8, 1)
    assert size.wanted() == 3
    assert size.update(2, None) == (2, 1)
    assert size.wanted() == 2
    with pytest.raises(ValueError, match="greater than max"):
        size.update(2, 5)


def test_fixed_pools_grow_and_shrink_on_request() -> None:
    size = PoolSize(2)
    size.grow(3)
    size.shrink(1)
    assert size.wanted() == 4
    with pytest.raises(ValueError, match="at least one"):
        size.shrink(4)
    with pytest.raises(ValueError, match="Autoscale not enabled"):
        size.update(4, 1)


@pytest.mark.parametrize("pool", ["threads", "asyncio", "solo"])
def test_autoscale_on_another_pool_is_refused_naming_the_pool(app: Celeriac, pool: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=f"needs the prefork pool: the {pool} pool"):
        WorkerOptions.resolve(app, pool=pool, autoscale="4,1")


def test_autoscale_starts_the_worker_at_min(app: Celeriac) -> None:
    options = WorkerOptions.resolve(app, pool="prefork", concurrency=8, autoscale="2,6")
    assert (options.autoscale, options.concurrency) == ((6, 2), 2)


def test_a_custom_autoscaler_class_is_refused(app: Celeriac) -> None:
    app.conf.worker_autoscaler = "celery.worker.autoscale:Autoscaler"
    with pytest.raises(ImproperlyConfigured, match="worker_autoscaler"):
        app.conf.worker_autoscaler = "myproj.scaling:Autoscaler"
