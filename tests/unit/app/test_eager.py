"""Canvases under `task_always_eager`: run in this process, same values as on a worker."""

from __future__ import annotations

from typing import Any

import pytest

from celeriac import chain, chord, group, states
from celeriac.testing import memory_app


@pytest.fixture
def tasks() -> Any:
    app = memory_app("tests", task_always_eager=True)

    @app.task(name="tests.add")
    def add(x: int, y: int = 1) -> int:
        return x + y

    @app.task(name="tests.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="tests.fail")
    def fail(x: int) -> None:
        raise ValueError(f"boom {x}")

    class Tasks:
        pass

    namespace = Tasks()
    vars(namespace).update(add=add, tsum=tsum, fail=fail)
    return namespace


def test_eager_chains_groups_and_chords_compute_what_a_worker_would(tasks: Any) -> None:
    add, tsum = tasks.add, tasks.tsum
    assert chain(add.s(1, 1), add.s(2), add.si(5, 5))().get() == 10
    assert group(add.s(i, i) for i in range(3))().get() == [0, 2, 4]
    assert chord([add.s(1, 1), add.s(2, 2)], tsum.s())().get() == 6
    nested = chain(add.s(1, 1), group(add.s(1), add.s(2)), tsum.s())
    assert nested().get() == 7
    assert add.chunks([(1, 1), (2, 2), (3, 3)], 2)().get() == [[2, 4], [6]]


def test_an_eager_group_raises_its_members_own_exception(tasks: Any) -> None:
    result = group(tasks.add.s(1, 1), tasks.fail.s(2))()
    with pytest.raises(ValueError, match="boom 2"):
        result.get()
    values = result.join(propagate=False)
    assert values[0] == 2
    assert isinstance(values[1], ValueError)


def test_an_eager_chain_stops_at_the_failing_step(tasks: Any) -> None:
    result = chain(tasks.add.s(1, 1), tasks.fail.s(), tasks.add.s(3))()
    assert result.state == states.FAILURE
    with pytest.raises(ValueError, match="boom 2"):
        result.get()
