"""Blocking calls from an event loop, sent to a thread pool in batches.

Handing one call to a thread costs a queue put, a thread wake-up, a future and a
wake-up of the loop on return: on the asyncio pool's path (prepare and finish of every
task) that was about half of the worker's CPU. `BatchedCalls.call` queues the call;
everything queued during one turn of the loop goes to a thread as one job of at most
`MAX_BATCH` calls, run one after another, and the loop is woken once per job. A call
that raises fails only its own caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from concurrent.futures import Executor

__all__ = ["MAX_BATCH", "BatchedCalls"]

# Calls per job: several jobs run at once on the pool's threads, so one slow call (a
# result store waiting on a reconnect) holds back at most this many.
MAX_BATCH = 32

_Call = tuple["Callable[..., Any]", tuple[Any, ...], "asyncio.Future[Any]"]
_Done = tuple["asyncio.Future[Any]", Any, BaseException | None]


class BatchedCalls:
    """Runs `call(fun, *args)` on `pool`, many calls per thread hand-off."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: Executor) -> None:
        self._loop = loop
        self._pool = pool
        self._queued: list[_Call] = []

    async def call(self, fun: Callable[..., Any], *args: Any) -> Any:
        future: asyncio.Future[Any] = self._loop.create_future()
        if not self._queued:
            self._loop.call_soon(self._send)
        self._queued.append((fun, args, future))
        return await future

    def _send(self) -> None:
        queued, self._queued = self._queued, []
        for start in range(0, len(queued), MAX_BATCH):
            self._pool.submit(self._run, queued[start : start + MAX_BATCH])

    def _run(self, job: list[_Call]) -> None:
        """In a pool thread: run the job's calls, then wake the loop once."""
        done: list[_Done] = []
        for fun, args, future in job:
            try:
                done.append((future, fun(*args), None))
            except BaseException as exc:  # handed to the caller, whatever it is
                done.append((future, None, exc))
        self._loop.call_soon_threadsafe(_resolve, done)


def _resolve(done: list[_Done]) -> None:
    for future, value, exc in done:
        if future.cancelled():
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)
