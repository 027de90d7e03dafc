"""The asyncio side of sending and results: `adelay`, `aapply_async`, `aget`, `ajoin`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from celeriac import group
from celeriac.exceptions import ResultTimeout

if TYPE_CHECKING:
    from celeriac import Celeriac
    from tests.conftest import StartWorker


def test_adelay_and_aget_return_the_value(app: Celeriac, start_worker: StartWorker) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    start_worker()

    async def main() -> int:
        result = await add.adelay(2, 3)
        return await result.aget(timeout=10)

    assert asyncio.run(main()) == 5


def test_aapply_async_takes_options(app: Celeriac, start_worker: StartWorker) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    start_worker()

    async def main() -> tuple[str, int]:
        result = await add.aapply_async((1, 1), task_id="chosen-id")
        return result.id, await result.aget(timeout=10)

    assert asyncio.run(main()) == ("chosen-id", 2)


def test_aget_raises_the_tasks_exception(app: Celeriac, start_worker: StartWorker) -> None:
    @app.task
    def fail() -> None:
        raise KeyError("missing")

    start_worker()

    async def main() -> None:
        await (await fail.adelay()).aget(timeout=10)

    with pytest.raises(KeyError, match="missing"):
        asyncio.run(main())


def test_aget_times_out(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    async def main() -> None:
        await (await add.adelay(1, 1)).aget(timeout=0.2)

    with pytest.raises(ResultTimeout):
        asyncio.run(main())


def test_group_aget_returns_values_in_call_order(app: Celeriac, start_worker: StartWorker) -> None:
    @app.task
    def double(x: int) -> int:
        return 2 * x

    start_worker(concurrency=4)

    async def main() -> list[int]:
        result = await group(double.s(n) for n in range(8)).adelay()
        return await result.aget(timeout=10)

    assert asyncio.run(main()) == [2 * n for n in range(8)]


def test_group_aget_raises_the_first_failure(app: Celeriac, start_worker: StartWorker) -> None:
    @app.task
    def check(x: int) -> int:
        if x == 2:
            raise ValueError(f"bad {x}")
        return x

    start_worker()

    async def main() -> list[int]:
        return await (await group(check.s(n) for n in range(4)).adelay()).aget(timeout=10)

    with pytest.raises(ValueError, match="bad 2"):
        asyncio.run(main())


def test_group_ajoin_without_propagate_returns_the_exceptions(
    app: Celeriac, start_worker: StartWorker
) -> None:
    @app.task
    def check(x: int) -> int:
        if x == 1:
            raise ValueError("bad")
        return x

    start_worker()

    async def main() -> list[object]:
        result = await group(check.s(n) for n in range(3)).adelay()
        return await result.ajoin(timeout=10, propagate=False)

    values = asyncio.run(main())
    assert values[0] == 0
    assert isinstance(values[1], ValueError)
    assert values[2] == 2
