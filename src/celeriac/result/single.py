"""One task's result: `AsyncResult`, and `EagerResult` for runs in this process."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from celeriac import states
from celeriac.exceptions import (
    ImproperlyConfigured,
    IncompleteStream,
    ResultTimeout,
)
from celeriac.protocol.errors import decode_exception

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from datetime import datetime

    from celeriac.app.base import Celeriac
    from celeriac.backends.base import ResultBackend, ResultMeta
    from celeriac.result.sets import GroupResult, ResultSet
from celeriac.result.joins import assert_will_not_block
from celeriac.result.reading import MetaField, exception_of, revoke_ids, value_of

logger = logging.getLogger(__name__)

R_co = TypeVar("R_co", covariant=True)


class AsyncResult(Generic[R_co]):
    """The pending or finished result of one task.

    Args:
        id: The task id.
        app: The app whose backend stores the result (default: the current app).
        parent: The result of the task that came before in a chain.
    """

    def __init__(
        self,
        id: str,
        *,
        app: Celeriac | None = None,
        backend: ResultBackend | None = None,
        parent: AsyncResult[Any] | None = None,
        task_name: str | None = None,
    ) -> None:
        self.id = id
        if app is None:
            from celeriac.app.base import current_app

            app = current_app()
        self.app = app
        self._backend = backend
        self.parent: AsyncResult[Any] | GroupResult | None = parent
        self.task_name = task_name
        self._cache: ResultMeta | None = None

    @property
    def task_id(self) -> str:
        return self.id

    @property
    def backend(self) -> ResultBackend:
        if self._backend is None:
            self._backend = self.app.backend
        return self._backend

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return bool(other.id == self.id)
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    # -- reading ------------------------------------------------------------------

    def _meta(self) -> ResultMeta | None:
        if self._cache is not None:
            return self._cache
        meta = self.backend.get(self.id)
        if meta is not None and meta.is_ready:
            self._cache = meta
        return meta

    @property
    def state(self) -> str:
        meta = self._meta()
        return meta.status if meta is not None else states.PENDING

    status = state

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    @property
    def result(self) -> Any:
        """The return value, the exception of a failure, or a custom state's meta."""
        meta = self._meta()
        if meta is None:
            return None
        return value_of(meta)

    info = result

    # Fields of the stored meta (None while nothing is stored).
    traceback: MetaField[str] = MetaField()
    date_done: MetaField[datetime] = MetaField()
    args: MetaField[list[Any]] = MetaField()
    kwargs: MetaField[dict[str, Any]] = MetaField()
    worker: MetaField[str] = MetaField()
    retries: MetaField[int] = MetaField()
    queue: MetaField[str] = MetaField()

    @property
    def children(self) -> list[AsyncResult[Any] | GroupResult]:
        from celeriac.result.sets import result_from_tuple  # sets holds AsyncResults

        meta = self._meta()
        if meta is None:
            return []
        return [result_from_tuple(child, app=self.app) for child in meta.children]

    @property
    def name(self) -> str | None:
        meta = self._meta()
        return meta.name if meta is not None else self.task_name

    # -- waiting ------------------------------------------------------------------

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
        follow_parents: bool = True,
        callback: Callable[[str, Any], Any] | None = None,
        on_message: Callable[[dict[str, Any]], Any] | None = None,
        on_interval: Callable[[], Any] | None = None,
        no_ack: bool = True,
    ) -> R_co:
        """Wait for the task and return its value.

        Args:
            timeout: Seconds to wait; None waits forever.
            propagate: Re-raise the task's exception when it failed or was revoked.
            interval: With `on_message`/`on_interval`, seconds between two looks at the
                task's state; otherwise waiting is notified, not polled.
            disable_sync_subtasks: Refuse to wait from inside a running task.
            follow_parents: In a chain, raise the first failed parent's exception.
            callback: Called as `callback(task_id, value)` once the value is known (not
                when the failure is raised), as in Celery.
            on_message: Called with each state the task is seen in while waiting (a
                dict with `task_id`, `status`, `result`, ...: `update_state` progress
                too), the final one included.
            on_interval: Called after each `interval` spent waiting.
            no_ack: Accepted for Celery compatibility (results are not messages here).

        Raises:
            ResultTimeout: not ready within `timeout` (Celery's `TimeoutError`).
            Exception: the task's own exception, when `propagate`.
        """
        del no_ack
        if disable_sync_subtasks:
            assert_will_not_block()
        if follow_parents and propagate:
            self._raise_failed_parent()
        meta = self._cache
        if meta is None:
            if on_message is not None or on_interval is not None:
                meta = self._watch(timeout, interval, on_message, on_interval)
            else:
                meta = self.backend.wait(self.id, timeout=timeout)
            self._cache = meta
        elif on_message is not None:
            on_message(meta.to_dict())
        if propagate and meta.status in states.PROPAGATE_STATES:
            raise exception_of(meta)
        value = cast("R_co", value_of(meta))
        if callback is not None:
            callback(self.id, value)
        return value

    wait = get

    async def aget(
        self, timeout: float | None = None, propagate: bool = True, follow_parents: bool = True
    ) -> R_co:
        """`get()` for asyncio code: the event loop runs on while it waits.

        On Redis the wait is a subscription on the loop itself (no thread); other backends
        poll from the loop's default thread pool (see `ResultBackend.wait_many_async`).

        Raises:
            ResultTimeout: not ready within `timeout` (Celery's `TimeoutError`).
            Exception: the task's own exception, when `propagate`.
        """
        if follow_parents and propagate and self.parent is not None:
            await asyncio.to_thread(self._raise_failed_parent)
        meta = self._cache
        if meta is None:
            metas = await self.backend.wait_many_async([self.id], timeout=timeout)
            meta = self._cache = metas[self.id]
        if propagate and meta.status in states.PROPAGATE_STATES:
            raise exception_of(meta)
        return cast("R_co", value_of(meta))

    def _watch(
        self,
        timeout: float | None,
        interval: float,
        on_message: Callable[[dict[str, Any]], Any] | None,
        on_interval: Callable[[], Any] | None,
    ) -> ResultMeta:
        """Wait as `get` does, reporting each state seen (each step waits on the backend's
        notification for up to `interval`, so the final state is seen at once)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        step = max(interval, 0.01)
        seen: tuple[Any, ...] | None = None
        while True:
            meta = self.backend.get(self.id)
            if meta is not None and on_message is not None:
                mark = (meta.status, repr(meta.result))
                if mark != seen:
                    seen = mark
                    on_message(meta.to_dict())
            if meta is not None and meta.is_ready:
                return meta
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ResultTimeout(f"task {self.id} not ready after {timeout} s")
            try:
                self.backend.wait(
                    self.id, timeout=step if remaining is None else min(step, remaining)
                )
            except ResultTimeout:
                if on_interval is not None:
                    on_interval()

    def collect(
        self, intermediate: bool = False, **kwargs: Any
    ) -> Iterator[tuple[AsyncResult[Any] | ResultSet, Any]]:
        """Yield `(result, value)` for this result and then its children (the tasks it
        sent), breadth first, as Celery's `collect`; `kwargs` go to each `get()`.

        Raises:
            IncompleteStream: a result is not ready yet when its children are wanted
                (unless `intermediate`, which then skips them).
        """
        for node in self._iterdeps(intermediate=intermediate):
            yield node, node.get(**kwargs)

    def _iterdeps(self, *, intermediate: bool) -> Iterator[AsyncResult[Any] | ResultSet]:
        pending: list[AsyncResult[Any] | ResultSet] = [self]
        while pending:
            node = pending.pop(0)
            yield node
            if node.ready():
                pending.extend(node.children if isinstance(node, AsyncResult) else node.results)
            elif not intermediate:
                raise IncompleteStream(f"{node!r} is not ready; its children are unknown")

    def then(
        self,
        callback: Callable[[AsyncResult[Any]], Any],
        on_error: Callable[[BaseException], Any] | None = None,
        weak: bool = False,
    ) -> threading.Thread | None:
        """Call `callback(result)` once the task is done (Celery's `then`).

        Celery calls it when its result consumer drains the message; here a daemon
        thread of this process waits for the result and calls it (at once, in this
        thread, when the result is already there). An exception from `callback` goes to
        `on_error`, else it is logged.

        Returns:
            The waiting thread (None when the callback already ran).

        Raises:
            ImproperlyConfigured: `weak=True` (not supported).
        """
        if weak:
            raise ImproperlyConfigured("AsyncResult.then(weak=True) is not supported")

        def deliver() -> None:
            try:
                self.backend.wait(self.id)
                callback(self)
            except Exception as exc:  # isolation boundary: a user callback
                if on_error is None:
                    logger.exception("AsyncResult.then callback for %s raised", self.id)
                else:
                    on_error(exc)

        if self.ready():
            deliver()
            return None
        thread = threading.Thread(target=deliver, name=f"then-{self.id}", daemon=True)
        thread.start()
        return thread

    def _raise_failed_parent(self) -> None:
        from celeriac.result.sets import ResultSet  # sets holds AsyncResults

        node = self.parent
        while node is not None:
            if isinstance(node, ResultSet):
                # A group or chord header before us: its first failure is ours.
                for member_meta in node._metas().values():
                    if member_meta.status in states.PROPAGATE_STATES:
                        raise exception_of(member_meta)
            else:
                meta = node._meta()
                if meta is not None and meta.status in states.PROPAGATE_STATES:
                    raise exception_of(meta)
            node = node.parent

    def forget(self) -> None:
        """Delete the stored result."""
        self._cache = None
        self.backend.forget(self.id)

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: str | int | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Revoke the task (Celery's arguments): it is skipped if it has not started, and
        reads as REVOKED; every worker hears it over the broadcast channel too.

        `terminate=True` also stops it where it runs: stock workers send `signal`
        (SIGTERM by default), a celeriac prefork worker kills the child. `wait` collects
        the workers' replies for up to `timeout` seconds (1 s by default).
        """
        revoke_ids(self.app, [self.id], connection, terminate, signal, wait, timeout)

    def as_tuple(self) -> list[Any]:
        """Celery's compact form `[[id, parent_tuple], None]`."""
        parent = self.parent.as_tuple() if self.parent is not None else None
        return [[self.id, parent], None]


class EagerResult(AsyncResult[R_co]):
    """The result of a task run in this process (`apply()`, `task_always_eager`)."""

    def __init__(
        self,
        id: str,
        value: Any,
        state: str,
        *,
        traceback: str | None = None,
        app: Celeriac | None = None,
        parent: AsyncResult[Any] | None = None,
    ) -> None:
        super().__init__(id, app=app, parent=parent)
        self._value = value
        self._state = state
        from celeriac.backends.base import ResultMeta

        # An eager result is its own record: joins and state reads never wait on a backend.
        self._cache = ResultMeta(task_id=id, status=state, traceback=traceback)

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id}>"

    @property
    def state(self) -> str:
        return self._state

    status = state

    @property
    def result(self) -> Any:
        return self._value

    info = result

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
        follow_parents: bool = True,
        callback: Callable[[str, Any], Any] | None = None,
        on_message: Callable[[dict[str, Any]], Any] | None = None,
        on_interval: Callable[[], Any] | None = None,
        no_ack: bool = True,
    ) -> R_co:
        if on_message is not None:
            on_message({"task_id": self.id, "status": self._state, "result": self._value})
        if propagate and self._state in states.PROPAGATE_STATES:
            if isinstance(self._value, BaseException):
                raise self._value
            raise decode_exception(self._value)
        value = cast("R_co", self._value)
        if callback is not None:
            callback(self.id, value)
        return value

    wait = get

    def forget(self) -> None:
        pass
