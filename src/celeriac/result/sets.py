"""Results waited on together: `ResultSet`, `GroupResult`, and `result_from_tuple`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.exceptions import (
    BackendError,
    ImproperlyConfigured,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from celeriac.app.base import Celeriac
    from celeriac.backends.base import ResultMeta
from celeriac.result.joins import assert_will_not_block
from celeriac.result.reading import revoke_ids
from celeriac.result.single import AsyncResult


class ResultSet:
    """A set of results waited on together."""

    def __init__(
        self, results: Sequence[AsyncResult[Any] | ResultSet], *, app: Celeriac | None = None
    ) -> None:
        self.results: list[Any] = list(results)
        if app is None and self.results:
            app = self.results[0].app
        if app is None:
            from celeriac.app.base import current_app

            app = current_app()
        self.app = app

    def __iter__(self) -> Iterator[AsyncResult[Any]]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> Any:
        return self.results[index]

    def _metas(self) -> dict[str, ResultMeta]:
        ids = [r.id for r in self._leaves()]
        return self.app.backend.get_many(ids)

    def _leaves(self) -> list[AsyncResult[Any]]:
        leaves: list[AsyncResult[Any]] = []
        for result in self.results:
            if isinstance(result, GroupResult):
                leaves.extend(result._leaves())
            else:
                leaves.append(result)
        return leaves

    def completed_count(self) -> int:
        """How many members finished successfully."""
        return sum(1 for meta in self._metas().values() if meta.status == states.SUCCESS)

    def ready(self) -> bool:
        metas = self._metas()
        return all(
            r.id in metas and metas[r.id].status in states.READY_STATES for r in self._leaves()
        )

    def successful(self) -> bool:
        metas = self._metas()
        return all(r.id in metas and metas[r.id].status == states.SUCCESS for r in self._leaves())

    def failed(self) -> bool:
        return any(meta.status == states.FAILURE for meta in self._metas().values())

    def waiting(self) -> bool:
        return not self.ready()

    def join(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
    ) -> list[Any]:
        """Wait for every member; return their values in call order.

        Raises:
            ResultTimeout: not all ready within `timeout`.
            Exception: the first failed member's exception, when `propagate`.
        """
        del interval
        if disable_sync_subtasks:
            assert_will_not_block()
        deadline = None if timeout is None else time.monotonic() + timeout
        if propagate:
            self._wait_in_order(timeout=timeout)
        else:
            pending = [r for r in self._leaves() if r._cache is None]
            if pending:
                metas = self.app.backend.wait_many([r.id for r in pending], timeout=timeout)
                for result in pending:
                    result._cache = metas[result.id]
        values: list[Any] = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if isinstance(result, GroupResult):
                values.append(
                    result.join(timeout=remaining, propagate=propagate, disable_sync_subtasks=False)
                )
            else:
                values.append(
                    result.get(
                        timeout=remaining,
                        propagate=propagate,
                        disable_sync_subtasks=False,
                        follow_parents=False,
                    )
                )
        return values

    def _wait_in_order(self, *, timeout: float | None) -> None:
        """Wait until every member is ready, or raise the failure of the first failed
        member in call order as soon as every member before it is ready (Celery's
        `join`: a failure is not hidden behind members that are still running).

        One query reads every pending member after each wake-up, so members that
        finish together cost one round trip, not one each.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        backend = self.app.backend
        leaves = self._leaves()
        while True:
            pending: dict[str, list[AsyncResult[Any]]] = {}
            for result in leaves:
                if result._cache is None:
                    pending.setdefault(result.id, []).append(result)
            if pending:
                for task_id, meta in backend.get_many(list(pending)).items():
                    if meta.is_ready:
                        for result in pending[task_id]:
                            result._cache = meta
            blocking: AsyncResult[Any] | None = None
            for result in leaves:
                known = result._cache
                if known is None:
                    blocking = result
                    break
                if known.status in states.PROPAGATE_STATES:
                    # Raised by the member itself: an eager result holds the exception.
                    result.get(propagate=True, disable_sync_subtasks=False, follow_parents=False)
            if blocking is None:
                return
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            blocking._cache = backend.wait(blocking.id, timeout=remaining)

    get = join
    join_native = join

    async def ajoin(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """`join()` for asyncio code: every member's value, in call order.

        With `propagate`, members are awaited in call order and the first failure is
        raised as soon as it is known (as `join` does); otherwise all are awaited at once.

        Raises:
            ResultTimeout: not all ready within `timeout`.
            Exception: the first failed member's exception, when `propagate`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = [r for r in self._leaves() if r._cache is None]
        if pending and not propagate:
            metas = await self.app.backend.wait_many_async([r.id for r in pending], timeout=timeout)
            for result in pending:
                result._cache = metas[result.id]
        values: list[Any] = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if isinstance(result, ResultSet):
                values.append(await result.ajoin(timeout=remaining, propagate=propagate))
            else:
                values.append(
                    await result.aget(timeout=remaining, propagate=propagate, follow_parents=False)
                )
        return values

    aget = ajoin

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: str | int | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Revoke every member (the arguments are `AsyncResult.revoke`'s)."""
        revoke_ids(
            self.app, [r.id for r in self._leaves()], connection, terminate, signal, wait, timeout
        )

    def forget(self) -> None:
        for result in self._leaves():
            result.forget()


class GroupResult(ResultSet):
    """The results of a group, in call order.

    Args:
        id: The group id.
        results: Member results, in call order.
    """

    def __init__(
        self,
        id: str,
        results: Sequence[AsyncResult[Any] | ResultSet],
        *,
        app: Celeriac | None = None,
        parent: AsyncResult[Any] | GroupResult | None = None,
    ) -> None:
        super().__init__(results, app=app)
        self.id = id
        self.parent = parent

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    @property
    def children(self) -> list[AsyncResult[Any]]:
        return self.results

    def as_tuple(self) -> list[Any]:
        parent = self.parent.as_tuple() if self.parent is not None else None
        return [[self.id, parent], [r.as_tuple() for r in self.results]]

    def save(self) -> GroupResult:
        """Store the group so that `GroupResult.restore(id)` finds it."""
        self.app.backend.save_group(self.id, self.as_tuple())
        return self

    def delete(self) -> None:
        self.app.backend.delete_group(self.id)

    @classmethod
    def restore(cls, id: str, *, app: Celeriac | None = None) -> GroupResult | None:
        """The saved group `id`, or None."""
        if app is None:
            from celeriac.app.base import current_app

            app = current_app()
        stored = app.backend.get_group(id)
        if stored is None:
            return None
        restored = result_from_tuple(stored, app=app)
        if not isinstance(restored, GroupResult):
            raise ImproperlyConfigured(f"stored group {id} is not a group result")
        return restored


def result_from_tuple(value: Any, *, app: Celeriac | None = None) -> Any:
    """Rebuild an `AsyncResult`/`GroupResult` from Celery's `as_tuple()` form."""
    if isinstance(value, AsyncResult | ResultSet):
        return value
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise BackendError(f"not a result tuple: {value!r}")
    (task_id, parent), nodes = value
    parent_result = result_from_tuple(parent, app=app) if parent else None
    if nodes is not None:
        return GroupResult(
            task_id,
            [result_from_tuple(node, app=app) for node in nodes],
            app=app,
            parent=parent_result,
        )
    return AsyncResult(task_id, app=app, parent=parent_result)
