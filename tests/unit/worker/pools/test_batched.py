"""`BatchedCalls`: blocking calls from the loop go to threads in batches."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

import pytest

from celeriac.worker.pools.batched import MAX_BATCH, BatchedCalls

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")


def run(work: Callable[[BatchedCalls], Awaitable[T]]) -> T:
    """Run `work` on a fresh loop with a pool of 4 threads."""

    async def main() -> T:
        with ThreadPoolExecutor(4) as pool:
            return await work(BatchedCalls(asyncio.get_running_loop(), pool))

    return asyncio.run(main())


def test_calls_queued_in_one_turn_share_a_thread_job() -> None:
    threads: list[int] = []

    def where(n: int) -> int:
        threads.append(threading.get_ident())
        return n * 2

    async def go(calls: BatchedCalls) -> list[int]:
        return list(await asyncio.gather(*(calls.call(where, n) for n in range(10))))

    assert run(go) == [n * 2 for n in range(10)]
    assert len(set(threads)) == 1
    assert threading.get_ident() not in threads


def test_a_big_turn_is_split_into_jobs_of_max_batch() -> None:
    jobs: dict[int, int] = {}
    lock = threading.Lock()
    gate = threading.Barrier(2, timeout=5)

    def note(n: int) -> int:
        if n % MAX_BATCH == 0 and n < 2 * MAX_BATCH:
            gate.wait()  # the first two jobs run at the same time, on two threads
        with lock:
            ident = threading.get_ident()
            jobs[ident] = jobs.get(ident, 0) + 1
        return n

    async def go(calls: BatchedCalls) -> list[int]:
        return list(await asyncio.gather(*(calls.call(note, n) for n in range(2 * MAX_BATCH))))

    assert run(go) == list(range(2 * MAX_BATCH))
    assert sorted(jobs.values()) == [MAX_BATCH, MAX_BATCH]


def test_an_error_fails_only_its_own_caller() -> None:
    def maybe(n: int) -> int:
        if n == 3:
            raise ValueError("three")
        return n

    async def go(calls: BatchedCalls) -> list[object]:
        return list(
            await asyncio.gather(*(calls.call(maybe, n) for n in range(6)), return_exceptions=True)
        )

    results = run(go)
    assert results[:3] == [0, 1, 2]
    assert results[4:] == [4, 5]
    assert isinstance(results[3], ValueError)
    with pytest.raises(ValueError, match="three"):
        run(lambda calls: calls.call(maybe, 3))
