"""`Task[P, R]`: a function made callable over a broker, with Celery's options and API.

`add.delay(2, 2)` is checked against `add`'s signature by mypy (`P.args`/`P.kwargs`) and,
with `typing=True` (the default), at call time too. `self.request` is a `Context` held in
a contextvar, so threads and asyncio tasks each see their own.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import types
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NoReturn, TypeVar

from celeriac import states
from celeriac.app.context import Context, current_task, pop_context, push_context, request_of
from celeriac.app.retry_policy import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF_MAX,
    DEFAULT_RETRY_DELAY,
    backoff_countdown,
)
from celeriac.app.send import resolve_eta
from celeriac.exceptions import (
    Ignore,
    ImproperlyConfigured,
    MaxRetriesExceededError,
    Reject,
    Retry,
)

if sys.version_info >= (3, 11):
    from typing import ParamSpec
else:  # pragma: no cover
    from typing_extensions import ParamSpec

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
    from datetime import datetime, timedelta

    from celeriac.app.base import Celeriac
    from celeriac.backends.base import ResultBackend
    from celeriac.canvas import Signature
    from celeriac.result import AsyncResult, EagerResult

__all__ = ["AsyncTask", "Task", "task_entry"]

P = ParamSpec("P")
R = TypeVar("R")


def _class_task_name(cls: type[Any]) -> str:
    # Celery compat: a class-based task without a name is `<module>.<ClassName>`.
    return f"{cls.__module__}.{cls.__name__}"


class Task(Generic[P, R]):
    """A task: call it directly to run it here, `delay()` it to run it on a worker.

    Instances are made by `@app.task`; subclass it and pass `base=` to share hooks
    (`before_start`, `on_success`, `on_failure`, `on_retry`, `after_return`).
    """

    #: Defaults; each falls back to the app setting of the same meaning when None.
    typing: bool = True
    ignore_result: bool | None = None
    store_errors_even_if_ignored: bool | None = None
    rate_limit: str | float | None = None
    max_retries: int | None = DEFAULT_MAX_RETRIES
    default_retry_delay: float = DEFAULT_RETRY_DELAY
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: ClassVar[dict[str, Any]] = {}
    retry_backoff: bool | float = False
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX
    retry_jitter: bool = True
    acks_late: bool | None = None
    acks_on_failure_or_timeout: bool | None = None
    #: None follows `task_reject_on_worker_lost`; see `resolve_redelivery_limit`.
    reject_on_worker_lost: bool | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    expires: float | datetime | None = None
    priority: int | None = None
    queue: str | None = None
    routing_key: str | None = None
    exchange: str | None = None
    serializer: str | None = None
    compression: str | None = None
    track_started: bool | None = None
    throws: tuple[type[BaseException], ...] = ()
    trail: bool = True
    send_events: bool = True
    #: Celery compat (5.5+): validate arguments annotated with pydantic models (and dump
    #: a returned model) — see `celeriac.app.pydantic`.
    pydantic: bool = False
    pydantic_strict: bool = False
    pydantic_context: dict[str, Any] | None = None
    pydantic_dump_kwargs: dict[str, Any] | None = None
    #: The app of instances of a class made by `app.Task` (class-based tasks).
    _bound_app: ClassVar[Celeriac | None] = None

    def __init__(
        self,
        fun: Callable[..., Any] | None = None,
        *,
        app: Celeriac | None = None,
        name: str | None = None,
        bind: bool = False,
        **options: Any,
    ) -> None:
        if fun is None:
            # A class-based task (Celery's `class MyTask(app.Task): def run(self, ...)`):
            # its own `run` is the body; the instance's `run` stays the wrapper that
            # applies autoretry.
            if type(self).run is Task.run:
                raise TypeError(f"{type(self).__name__} needs a run() method or a function")
            fun = self.run
            self.run = types.MethodType(Task.run, self)  # type: ignore[method-assign]
            name = name or getattr(type(self), "name", None) or _class_task_name(type(self))
        if name is None:
            raise TypeError("a task needs a name")
        self._app = app if app is not None else self._bound_app
        self.name = name
        self.bind = bind
        for key, value in options.items():
            setattr(self, key, value)
        if self.pydantic:
            from celeriac.app.pydantic_args import PydanticCall

            self._pydantic: PydanticCall | None = PydanticCall(self, fun)
            fun = self._pydantic.wrap(fun)
        else:
            self._pydantic = None
        self._fun = fun
        self.is_async = inspect.iscoroutinefunction(fun)
        self.__doc__ = fun.__doc__
        self.__name__ = getattr(fun, "__name__", name)
        self.__qualname__ = getattr(fun, "__qualname__", name)
        self.__module__ = getattr(fun, "__module__", __name__)
        self.__wrapped__ = fun
        self._signature: inspect.Signature | None = None

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    @property
    def app(self) -> Celeriac:
        if self._app is None:
            from celeriac.app.base import current_app

            return current_app()
        return self._app

    @property
    def backend(self) -> ResultBackend:
        return self.app.backend

    # -- running here ---------------------------------------------------------------

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The task's body (bound `self` prepended, autoretry applied)."""
        if self.autoretry_for:
            if self.is_async:
                return self._run_async_with_autoretry(*args, **kwargs)
            try:
                return self._call_fun(*args, **kwargs)
            except (Retry, Ignore, Reject):
                raise
            except self.autoretry_for as exc:
                self._autoretry(exc)
        return self._call_fun(*args, **kwargs)

    def _call_fun(self, *args: Any, **kwargs: Any) -> Any:
        if self.bind:
            return self._fun(self, *args, **kwargs)
        return self._fun(*args, **kwargs)

    async def _run_async_with_autoretry(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._call_fun(*args, **kwargs)
        except (Retry, Ignore, Reject):
            raise
        except self.autoretry_for as exc:
            self._autoretry(exc)

    def _autoretry(self, exc: BaseException) -> NoReturn:
        if self.dont_autoretry_for and isinstance(exc, self.dont_autoretry_for):
            raise exc
        options = dict(self.retry_kwargs)
        if self.retry_backoff and "countdown" not in options:
            factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
            options["countdown"] = backoff_countdown(
                factor,
                self.request.retries,
                self.retry_backoff_max,
                full_jitter=self.retry_jitter,
            )
        raise self.retry(exc=exc, **options)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task in this process, now (no message, no result stored)."""
        if current_task() is self:
            result: R = self.run(*args, **kwargs)
            return result
        token = push_context(self, Context(args=list(args), kwargs=dict(kwargs)))
        try:
            result = self.run(*args, **kwargs)
            return result
        finally:
            pop_context(token)

    @property
    def request(self) -> Context:
        """The running call's context (an empty one outside a call)."""
        return request_of(self)

    # -- sending ----------------------------------------------------------------------

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise TypeError now if the task could not be called with these arguments."""
        if self._signature is None:
            signature = inspect.signature(self._fun)
            if self.bind:
                params = list(signature.parameters.values())[1:]
                signature = signature.replace(parameters=params)
            self._signature = signature
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}() called with bad arguments: {exc}") from None

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task to a worker with these arguments."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | timedelta | None = None,
        priority: int | None = None,
        queue: str | None = None,
        routing_key: str | None = None,
        exchange: str | None = None,
        link: Signature[Any] | Sequence[Signature[Any]] | None = None,
        link_error: Signature[Any] | Sequence[Signature[Any]] | None = None,
        task_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        ignore_result: bool | None = None,
        serializer: str | None = None,
        compression: str | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        shadow: str | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task with execution options (Celery's `apply_async`).

        Raises:
            TypeError: the arguments do not fit the task (when `typing` is on).
            SerializationError: an argument cannot be serialized.
            MessageTooLarge: the message exceeds `task_max_message_size`.
            PublishError: the broker did not take the message.
        """
        args = list(args or ())
        kwargs = dict(kwargs or {})
        if self.typing:
            self.check_arguments(args, kwargs)
        if self._pydantic is not None and (serializer or self.serializer) != "pickle":
            # Celery compat: models the task rebuilds equal are sent as plain dicts.
            args, kwargs = self._pydantic.dump_arguments(args, kwargs)
        given = {
            "countdown": countdown,
            "eta": eta,
            "expires": expires,
            "priority": priority,
            "queue": queue,
            "routing_key": routing_key,
            "exchange": exchange,
            "link": link,
            "link_error": link_error,
            "task_id": task_id,
            "headers": headers,
            "ignore_result": ignore_result,
            "serializer": serializer,
            "compression": compression,
            "time_limit": time_limit,
            "soft_time_limit": soft_time_limit,
            "shadow": shadow,
        }
        for key, value in given.items():
            if value is not None:
                options[key] = value
        for key in (
            "queue",
            "routing_key",
            "exchange",
            "priority",
            "expires",
            "serializer",
            "compression",
            "time_limit",
            "soft_time_limit",
        ):
            if options.get(key) is None:
                default = getattr(self, key)
                if default is not None:
                    options[key] = default
        app = self.app
        if app.send_conf().always_eager:
            return self.apply(args, kwargs, **options)
        return app.send_task(self.name, args, kwargs, _task=self, **options)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """`delay()` for asyncio code (FastAPI and other ASGI apps): see `aapply_async`."""
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """`apply_async()` for asyncio code: the publish runs in the loop's default thread
        pool, so a slow or reconnecting broker never stalls the event loop. Wait for the
        value with `await result.aget(timeout=...)`."""
        return await asyncio.to_thread(self.apply_async, args, kwargs, **options)

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Send the task when the current Django database transaction commits (never if
        it rolls back; at once outside a transaction). Returns None: nothing is sent yet.

        Raises:
            TypeError: the arguments do not fit the task (checked now, not at commit).
        """
        self.apply_async_on_commit(args, kwargs)

    def apply_async_on_commit(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """`apply_async(args, kwargs, **options)` when the current Django database
        transaction commits (Django's `transaction.on_commit`; `using=` picks the
        database alias)."""
        try:
            from django.db import transaction
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"{self.name}: apply_async_on_commit() waits for a Django transaction, "
                "and Django is not installed: use apply_async()"
            ) from exc
        args = list(args or ())
        kwargs = dict(kwargs or {})
        if self.typing:
            self.check_arguments(args, kwargs)
        using = options.pop("using", None)
        transaction.on_commit(lambda: self.apply_async(args, kwargs, **options), using=using)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult[R]:
        """Run the task here and now, like a worker would (retries inline, callbacks
        applied), and return an `EagerResult`."""
        from celeriac.app.eager import apply_eagerly

        return apply_eagerly(self, list(args or ()), dict(kwargs or {}), options)

    # -- canvas -------------------------------------------------------------------------

    def signature(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature[R]:
        from celeriac.canvas import Signature

        return Signature(self.name, args, kwargs, options, app=self._app)

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A signature with partial arguments (the parent's result is prepended)."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """An immutable signature: it ignores the parent's result."""
        sig = self.signature(args, kwargs)
        sig["immutable"] = True
        return sig

    subtask = signature

    def map(self, items: Iterable[Any]) -> Signature[list[R]]:
        from celeriac.canvas import xmap

        return xmap(self.s(), items, app=self._app)

    def starmap(self, items: Iterable[Sequence[Any]]) -> Signature[list[R]]:
        from celeriac.canvas import xstarmap

        return xstarmap(self.s(), items, app=self._app)

    def chunks(self, items: Iterable[Sequence[Any]], n: int) -> Any:
        from celeriac.canvas import chunks

        return chunks(self.s(), items, n, app=self._app)

    # -- inside a running task -------------------------------------------------------

    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Send this call again later (same id, `retries + 1`) and stop this run.

        Use as `raise self.retry(exc=exc)`. Over `max_retries`, re-raises `exc` when given,
        else raises `MaxRetriesExceededError`.

        Raises:
            Retry: the retry was sent (unless `throw=False`).
        """
        request = self.request
        if request.called_directly:
            # Celery compat: not running as a task, so there is nothing to retry.
            if exc is not None:
                raise exc
            raise RuntimeError(f"{self.name}.retry() called outside of a task run")
        if max_retries is None:
            max_retries = self.max_retries
        if max_retries is not None and request.retries >= max_retries:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} "
                f"kwargs:{request.kwargs}",
                task_args=request.args,
                task_kwargs=request.kwargs,
            )
        if eta is None and countdown is None:
            countdown = self.default_retry_delay
        retry = Retry(exc=exc, when=eta or countdown)
        new_args = list(args) if args is not None else list(request.args)
        new_kwargs = dict(kwargs) if kwargs is not None else dict(request.kwargs)
        if request.is_eager:
            retry.eager_args = (new_args, new_kwargs)  # type: ignore[attr-defined]
        else:
            when = resolve_eta(
                eta,
                None if eta is not None else countdown,
                now=self.app.now(),
                zone=lambda: self.app.timezone,
            )
            call = request.retried(self.name, new_args, new_kwargs, eta=when)
            self.app.sender.send_retry(self, call, request.origin_queue, options)
        if throw:
            raise retry
        return retry

    def replace(self, sig: Signature[Any]) -> Any:
        """Replace this run with `sig`, which takes over its id, callbacks, errbacks, group
        and chord place and the rest of its chain (Celery's `Task.replace`).

        Use as `return self.replace(sig)`. In a worker the replacement is sent and this run
        ends with `Ignore` (no result is stored for it: the replacement stores one under
        the same id); run eagerly, the replacement runs here and its value is returned.

        Raises:
            Ignore: always, in a worker, once the replacement is sent.
            ImproperlyConfigured: `sig` is part of a chord, or an empty chain.
        """
        from celeriac.canvas import _chain, group, signature

        request = self.request
        if "chord" in sig.options:
            raise ImproperlyConfigured("a signature replacing a task must not be part of a chord")
        if isinstance(sig, _chain) and not sig.tasks:
            raise ImproperlyConfigured("cannot replace a task with an empty chain")
        app = self.app
        if isinstance(sig, group):
            # Celery compat: a group's results are gathered into one list.
            sig = sig | app.tasks["celery.accumulate"].s(index=0)
        for callback in request.callbacks or []:
            sig.link(signature(callback, app=app))
        for errback in request.errbacks or []:
            sig.link_error(signature(errback, app=app))
        nesting = request.replaced_task_nesting + 1
        if request.id is not None:
            sig.freeze(
                request.id,
                group_id=request.group,
                group_index=request.group_index,
                root_id=request.root_id,
            )
        if request.chord:
            sig.set(chord=dict(request.chord))
        sig.set(replaced_task_nesting=nesting)
        for step in reversed(request.chain or []):
            sig = sig | signature(step, app=app).set(replaced_task_nesting=nesting)
        if request.is_eager or request.called_directly:
            return sig.apply().get()
        sig.apply_async()
        raise Ignore("replaced by a new task")

    def update_state(
        self,
        task_id: str | None = None,
        state: str | None = None,
        meta: Any = None,
    ) -> None:
        """Store a state (e.g. a custom "PROGRESS" with a meta dict) for a task."""
        from celeriac.backends.base import ResultMeta

        task_id = task_id or self.request.id
        if task_id is None:
            raise RuntimeError("update_state() needs a task_id outside of a task run")
        self.backend.store(ResultMeta(task_id=task_id, status=state or states.PENDING, result=meta))

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:
        from celeriac.result import AsyncResult

        return AsyncResult(task_id, app=self.app, task_name=self.name)

    def send_event(self, type_: str, **fields: Any) -> None:
        """Accepted for Celery compatibility; task events are not sent yet."""

    # -- hooks (override in a base class) --------------------------------------------

    def before_start(self, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Called in the worker before the task body runs."""

    def on_success(
        self, retval: Any, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> None:
        """Called in the worker after the task body returned."""

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        einfo: Any,
    ) -> None:
        """Called in the worker after the task body raised."""

    def on_retry(
        self,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        einfo: Any,
    ) -> None:
        """Called in the worker after the task asked to be retried."""

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        einfo: Any,
    ) -> None:
        """Called in the worker after every run, whatever the outcome."""

    # -- used by workers ---------------------------------------------------------------

    def resolve_acks_late(self) -> bool:
        if self.acks_late is not None:
            return self.acks_late
        return bool(self.app.conf.task_acks_late)

    def resolve_redelivery_limit(self) -> int:
        """How many times this task's worker process may die running one message before
        it is recorded as `WorkerLostError` instead of run again.

        Celery compat: `reject_on_worker_lost=False` records the failure at the first
        death (as Celery does with `acks_late`); True or unset (None) redelivers, up to
        `task_redelivery_limit` times.
        """
        reject = self.reject_on_worker_lost
        if reject is None:
            reject = self.app.conf.task_reject_on_worker_lost
        if reject is False:
            return 1
        return int(self.app.conf.task_redelivery_limit)

    def resolve_ignore_result(self, header: bool | None) -> bool:
        if header:
            return True
        if self.ignore_result is not None:
            return self.ignore_result
        return bool(self.app.conf.task_ignore_result)

    def resolve_track_started(self) -> bool:
        if self.track_started is not None:
            return self.track_started
        return bool(self.app.conf.task_track_started)

    @property
    def new_style_errback(self) -> bool:
        """True when this task, used as an errback, takes `(request, exc, traceback)`.

        Celery compat (5.7 `_call_task_errbacks`): a function taking `*args` or more than
        one positional argument is called in the worker; a bound task never is (Celery
        sends it as a task with the failed task's id, so it can retry).
        """
        if self.bind:
            return False
        params = inspect.signature(self._fun).parameters.values()
        if any(p.kind == p.VAR_POSITIONAL for p in params):
            return True
        return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) > 1


def task_entry(task: Task[Any, Any]) -> Callable[..., Any]:
    """What a worker calls to run `task`'s body: the task itself when its class overrides
    `__call__`, else `run`.

    Celery compat: Flask's documented `FlaskTask` (`Celery(app.name, task_cls=FlaskTask)`)
    wraps the body in an application context in its `__call__`, and Celery's workers call
    a task through `__call__` when it is custom.
    """
    if type(task).__call__ in _PLAIN_CALLS:
        return task.run
    return task


class AsyncTask(Task[P, R]):
    """A task whose body is `async def`: calling it directly returns a coroutine."""

    def __call__(  # type: ignore[override]
        self, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, R]:
        return self._call_async(*args, **kwargs)

    async def _call_async(self, *args: Any, **kwargs: Any) -> R:
        if current_task() is self:
            result: R = await self.run(*args, **kwargs)
            return result
        token = push_context(self, Context(args=list(args), kwargs=dict(kwargs)))
        try:
            result = await self.run(*args, **kwargs)
            return result
        finally:
            pop_context(token)


# The `__call__`s that only run the body: a task with one of these is run through `run`.
_PLAIN_CALLS = (Task.__call__, AsyncTask.__call__)
