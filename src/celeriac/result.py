"""Results as the caller sees them: `AsyncResult`, `GroupResult`, `EagerResult`.

Reading never runs stored code: a stored failure is rebuilt by
`protocol.errors.decode_exception`, which only uses exception classes already loaded in
this process. `get()` blocks on the backend's notification (pub/sub on Redis, a data
version check on SQLite, a condition in memory), never a busy loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from celeriac import states
from celeriac.exceptions import (
    BackendError,
    ImproperlyConfigured,
    IncompleteStream,
    ResultTimeout,
)
from celeriac.protocol.errors import decode_exception

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from datetime import datetime

    from celeriac.app.base import Celeriac
    from celeriac.backends.base import ResultBackend, ResultMeta

__all__ = [
    "AsyncResult",
    "EagerResult",
    "GroupResult",
    "ResultSet",
    "allow_join_result",
    "denied_join_result",
    "result_from_tuple",
]

logger = logging.getLogger(__name__)

R_co = TypeVar("R_co", covariant=True)
T = TypeVar("T")


# Set by `allow_join_result()`: waiting inside a task is allowed in this context.
_join_allowed: ContextVar[bool] = ContextVar("celeriac_join_allowed", default=False)


@contextlib.contextmanager
def allow_join_result() -> Iterator[None]:
    """Allow `result.get()` inside a task, for the block (Celery's `allow_join_result`).

    Waiting in a task for another task can deadlock a worker whose slots are all busy
    waiting: prefer a chain or a chord.
    """
    token = _join_allowed.set(True)
    try:
        yield
    finally:
        _join_allowed.reset(token)


@contextlib.contextmanager
def denied_join_result() -> Iterator[None]:
    """Refuse `result.get()` inside a task again, for the block (Celery's name)."""
    token = _join_allowed.set(False)
    try:
        yield
    finally:
        _join_allowed.reset(token)


def _assert_will_not_block() -> None:
    from celeriac.app.context import current_request

    if _join_allowed.get():
        return
    request = current_request()
    if request is not None and not request.is_eager and not request.called_directly:
        raise RuntimeError(
            "never call result.get() within a task: it can deadlock the worker; "
            "use a chain or a chord, or wrap the call in `with allow_join_result():` "
            "(or pass disable_sync_subtasks=False) if you must"
        )


class _MetaField(Generic[T]):
    """A read-only attribute of an `AsyncResult`: the same field of its stored meta, None
    while nothing is stored."""

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self._name = name

    def __get__(self, result: AsyncResult[Any], owner: type[Any] | None = None) -> T | None:
        meta = result._meta()
        return cast("T | None", getattr(meta, self._name)) if meta is not None else None


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
        return _value_of(meta)

    info = result

    # Fields of the stored meta (None while nothing is stored).
    traceback: _MetaField[str] = _MetaField()
    date_done: _MetaField[datetime] = _MetaField()
    args: _MetaField[list[Any]] = _MetaField()
    kwargs: _MetaField[dict[str, Any]] = _MetaField()
    worker: _MetaField[str] = _MetaField()
    retries: _MetaField[int] = _MetaField()
    queue: _MetaField[str] = _MetaField()

    @property
    def children(self) -> list[AsyncResult[Any] | GroupResult]:
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
            _assert_will_not_block()
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
            raise _exception_of(meta)
        value = cast("R_co", _value_of(meta))
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
            raise _exception_of(meta)
        return cast("R_co", _value_of(meta))

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
        node = self.parent
        while node is not None:
            if isinstance(node, ResultSet):
                # A group or chord header before us: its first failure is ours.
                for member_meta in node._metas().values():
                    if member_meta.status in states.PROPAGATE_STATES:
                        raise _exception_of(member_meta)
            else:
                meta = node._meta()
                if meta is not None and meta.status in states.PROPAGATE_STATES:
                    raise _exception_of(meta)
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
        _revoke(self.app, [self.id], connection, terminate, signal, wait, timeout)

    def as_tuple(self) -> list[Any]:
        """Celery's compact form `[[id, parent_tuple], None]`."""
        parent = self.parent.as_tuple() if self.parent is not None else None
        return [[self.id, parent], None]


def _revoke(
    app: Celeriac,
    ids: list[str],
    connection: Any,
    terminate: bool,
    signal: str | int | None,
    wait: bool,
    timeout: float | None,
) -> None:
    from celeriac.app.control import TERM_SIGNAME

    app.control.revoke(
        ids,
        connection=connection,
        terminate=terminate,
        signal=TERM_SIGNAME if signal is None else signal,
        reply=wait,
        timeout=1.0 if timeout is None else timeout,
    )


def _value_of(meta: ResultMeta) -> Any:
    if meta.status in states.EXCEPTION_STATES:
        return decode_exception(meta.result)
    return meta.result


def _exception_of(meta: ResultMeta) -> Exception:
    exc = decode_exception(meta.result)
    if meta.traceback and not getattr(exc, "remote_traceback", None):
        with contextlib.suppress(AttributeError):  # classes with __slots__
            exc.remote_traceback = meta.traceback  # type: ignore[attr-defined]
    return exc


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
            _assert_will_not_block()
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
        _revoke(
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
