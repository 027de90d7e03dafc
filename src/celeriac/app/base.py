"""The application: settings, task registry, sending, and lazy broker/backend handles.

`Celeriac(main, broker=None, backend=None, include=(), **settings)` (also exported as
`Celery`). With no broker URL anywhere (argument, settings, `CELERIAC_BROKER_URL`), the
app uses the embedded default: the SQLite file `celeriac.db` in the current directory as
broker and result backend. A backend left unset follows the broker (`redis://` → the
same Redis, `sqlite://` → the same file, `amqp://` → `rpc://`).

Nothing connects at import or construction; the broker and backend are made on first use
in each process (and made again after `fork()`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, overload

from celeriac import signals
from celeriac._imports import import_object
from celeriac._time import UTC, utcnow
from celeriac.app.config import Settings
from celeriac.app.registry import TaskRegistry
from celeriac.app.routing import Router
from celeriac.app.task import AsyncTask, Context, Task, TaskOptions, current_request
from celeriac.brokers.base import Outgoing
from celeriac.exceptions import BrokerConnectionError, ImproperlyConfigured
from celeriac.protocol.codec import TaskCall, encode_task

if sys.version_info >= (3, 11):
    from typing import ParamSpec, Unpack
else:  # pragma: no cover
    from typing_extensions import ParamSpec, Unpack

if TYPE_CHECKING:
    from celeriac import result as _result
    from celeriac.app.control import Control
    from celeriac.backends.base import ResultBackend
    from celeriac.brokers.base import Broker
    from celeriac.canvas import Signature

__all__ = ["Celeriac", "current_app", "shared_task"]

P = ParamSpec("P")
R = TypeVar("R")

# The embedded default: broker and results in one SQLite file in the working directory.
DEFAULT_URL = "sqlite:///celeriac.db"

_current_app: ContextVar[Celeriac | None] = ContextVar("celeriac_current_app", default=None)
_default_app: Celeriac | None = None
_all_apps: weakref.WeakSet[Celeriac] = weakref.WeakSet()
_shared_tasks: list[tuple[Callable[..., Any], dict[str, Any]]] = []
# Messages per round trip of `producer_batch`.
BATCH_FLUSH_SIZE = 256
_batch: ContextVar[list[Outgoing] | None] = ContextVar("celeriac_batch", default=None)


def current_app() -> Celeriac:
    """The app in use: the one set in this context, else the last app created."""
    app = _current_app.get() or _default_app
    if app is None:
        app = Celeriac("default")
    return app


class TaskDecorator(Protocol):
    @overload
    def __call__(self, fun: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...

    @overload
    def __call__(self, fun: Callable[P, R], /) -> Task[P, R]: ...


class BoundTaskDecorator(Protocol):
    @overload
    def __call__(self, fun: Callable[..., Coroutine[Any, Any, R]], /) -> AsyncTask[..., R]: ...

    @overload
    def __call__(self, fun: Callable[..., R], /) -> Task[..., R]: ...


def _default_nodename() -> str:
    return socket.gethostname()


class Celeriac:
    """A Celeriac application.

    Args:
        main: Name of the main module (prefix for tasks defined in `__main__`).
        broker: Broker URL (`redis://`, `amqp://`, `sqlite:///path.db`, `memory://`).
        backend: Result backend URL (default: follows the broker).
        include: Modules a worker imports at start (where the tasks live).
        **settings: Any of Celery's lower-case settings.
    """

    def __init__(
        self,
        main: str | None = None,
        broker: str | None = None,
        backend: str | None = None,
        include: Sequence[str] = (),
        *,
        set_as_current: bool = True,
        **settings: Any,
    ) -> None:
        global _default_app
        self.main = main
        self.conf = Settings(settings)
        if broker is not None:
            self.conf.broker_url = broker
        if backend is not None:
            self.conf.result_backend = backend
        if include:
            self.conf.include = tuple(self.conf.include) + tuple(include)
        self.tasks = TaskRegistry()
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        self._router: Router | None = None
        self._control: Control | None = None
        self._autodiscover: list[tuple[Sequence[str], str]] = []
        self._local = threading.local()
        self._rpc_reply_to: tuple[int, str] | None = None
        self._send_conf: _SendConf | None = None
        self._finalized = False
        from celeriac.app.builtins import register_builtins

        register_builtins(self)
        for fun, options in _shared_tasks:
            self._create_task(fun, shared=True, **options)
        _all_apps.add(self)
        if set_as_current:
            _default_app = self
            _current_app.set(self)

    def __repr__(self) -> str:
        return f"<Celeriac {self.main or '__main__'}>"

    # -- configuration ----------------------------------------------------------------

    def config_from_object(
        self, obj: Any, *, silent: bool = False, force: bool = True, namespace: str | None = None
    ) -> None:
        """Load settings from a module, a dotted path or an object.

        Lower-case attribute names are read; with `namespace="CELERY"`, upper-case names
        prefixed `CELERY_` are read instead (Django style: `CELERY_BROKER_URL`).
        """
        del force
        if isinstance(obj, str):
            try:
                obj = import_object(obj)
            except ImportError:
                if silent:
                    return
                raise
        items: Mapping[str, Any]
        if isinstance(obj, Mapping):
            items = obj
        else:
            items = {k: getattr(obj, k) for k in dir(obj) if not k.startswith("_")}
        values: dict[str, Any] = {}
        if namespace:
            prefix = namespace.rstrip("_") + "_"
            for key, value in items.items():
                if key.startswith(prefix):
                    values[key[len(prefix) :].lower()] = value
        else:
            for key, value in items.items():
                if key == key.lower() and not callable(value) and not _is_module(value):
                    values[key] = value
        self.conf.update(values)
        self._router = None

    def config_from_envvar(self, variable: str, *, silent: bool = False) -> None:
        """Load settings from the module named by environment variable `variable`."""
        module = os.environ.get(variable)
        if not module:
            if silent:
                return
            raise ImproperlyConfigured(
                f"environment variable {variable} is not set: set it to a module name"
            )
        self.config_from_object(module, silent=silent)

    def autodiscover_tasks(
        self,
        packages: Sequence[str] | Callable[[], Sequence[str]] | None = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import `<package>.<related_name>` for each package, now (`force`) or when the
        app is finalized (a worker starting, or the first task lookup by name)."""
        names = packages() if callable(packages) else list(packages or ())
        if force or self._finalized:
            self._import_related(names, related_name)
        else:
            self._autodiscover.append((names, related_name))

    def _import_related(self, packages: Sequence[str], related_name: str) -> None:
        for package in packages:
            module_name = f"{package}.{related_name}" if related_name else package
            try:
                importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                # Only a missing `<pkg>.tasks` is fine; a broken import inside it is not.
                if exc.name != module_name:
                    raise

    def finalize(self) -> None:
        """Import `include`/`imports` modules and autodiscovered task modules (once)."""
        with self._lock:
            if self._finalized:
                return
            self._finalized = True
            for module in (*self.conf.include, *self.conf.imports):
                importlib.import_module(module)
            pending, self._autodiscover = self._autodiscover, []
            for packages, related_name in pending:
                self._import_related(packages, related_name)

    # -- tasks ------------------------------------------------------------------------

    @overload
    def task(self, fun: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...

    @overload
    def task(self, fun: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self, *, bind: Literal[True], **options: Unpack[TaskOptions]
    ) -> BoundTaskDecorator: ...

    @overload
    def task(
        self, *, bind: Literal[False] = False, **options: Unpack[TaskOptions]
    ) -> TaskDecorator: ...

    def task(self, *args: Any, **options: Any) -> Any:
        """Make a function a task: `@app.task` or `@app.task(bind=True, max_retries=5)`."""
        if args:
            if len(args) != 1 or not callable(args[0]) or options:
                raise ImproperlyConfigured(
                    "use @app.task on a function, or @app.task(option=value, ...)"
                )
            return self._create_task(args[0])

        def decorate(function: Callable[..., Any]) -> Task[Any, Any]:
            return self._create_task(function, **options)

        return decorate

    def _create_task(
        self, fun: Callable[..., Any], *, shared: bool = False, **options: Any
    ) -> Task[Any, Any]:
        name = options.pop("name", None) or self.gen_task_name(fun)
        base: type[Task[Any, Any]] = options.pop("base", None) or (
            AsyncTask if _is_coroutine_function(fun) else Task
        )
        bind = bool(options.pop("bind", False))
        unknown = [k for k in options if k not in TaskOptions.__annotations__]
        if unknown:
            raise ImproperlyConfigured(
                f"@task got unknown option(s) {', '.join(sorted(unknown))} for {name}"
            )
        if options.get("rate_limit") is not None:
            from celeriac.app.ratelimit import parse_rate

            parse_rate(options["rate_limit"])
        soft, hard = options.get("soft_time_limit"), options.get("time_limit")
        if soft is not None and hard is not None and soft > hard:
            raise ImproperlyConfigured(
                f"{name}: soft_time_limit ({soft}) must not exceed time_limit ({hard})"
            )
        task = base(fun, app=None if shared else self, name=name, bind=bind, **options)
        self.tasks.register(task)
        return task

    def gen_task_name(self, fun: Callable[..., Any]) -> str:
        module = getattr(fun, "__module__", None) or "__main__"
        if module == "__main__" and self.main:
            module = self.main
        # Celery compat: `<module>.<__name__>` (not the qualified name), so producers
        # and workers of both agree on names.
        return f"{module}.{fun.__name__}"

    # -- handles ---------------------------------------------------------------------

    def _check_fork(self) -> None:
        pid = os.getpid()
        if pid != self._pid:
            # Connections must not be shared with a parent process: make new ones.
            self._pid = pid
            self._broker = None
            self._backend = None
            self._lock = threading.RLock()

    @property
    def broker_url(self) -> str:
        return self.conf.broker_url_resolved() or DEFAULT_URL

    @property
    def result_backend_url(self) -> str:
        url = self.conf.result_backend_resolved()
        if url:
            return url
        broker = self.broker_url
        scheme = broker.partition("://")[0].lower()
        if scheme in ("amqp", "amqps", "pyamqp"):
            return "rpc://"
        return broker

    def broker_transport_options(self) -> dict[str, Any]:
        options = dict(self.conf.broker_transport_options)
        if self.conf.task_queue_max_priority is not None:
            options.setdefault("max_priority", self.conf.task_queue_max_priority)
        options.setdefault("heartbeat", self.conf.broker_heartbeat)
        options.setdefault("connect_timeout", self.conf.broker_connection_timeout)
        return options

    def create_broker(self, *, consumer_id: str | None = None) -> Broker:
        """A new broker object for this app's URL (workers make one per consumer)."""
        from celeriac.brokers import create_broker

        return create_broker(
            self.broker_url,
            transport_options=self.broker_transport_options(),
            consumer_id=consumer_id,
        )

    @property
    def broker(self) -> Broker:
        """This process's producer broker (thread-safe publishing)."""
        self._check_fork()
        broker = self._broker
        if broker is None:
            with self._lock:
                if self._broker is None:
                    self._broker = self.create_broker()
                broker = self._broker
        return broker

    def create_backend(self) -> ResultBackend:
        from celeriac.backends import create_backend

        options = dict(self.conf.result_backend_transport_options)
        if self.result_backend_url.startswith("rpc://"):
            options.setdefault("broker_url", self.broker_url)
            options.setdefault("reply_to", self.thread_oid)
        return create_backend(
            self.result_backend_url,
            serializer=self.conf.result_serializer,
            accept=self.conf.result_accept,
            expires=self.conf.result_expires,
            transport_options=options,
        )

    @property
    def backend(self) -> ResultBackend:
        """This process's result backend."""
        self._check_fork()
        backend = self._backend
        if backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = self.create_backend()
                backend = self._backend
        return backend

    @property
    def router(self) -> Router:
        if self._router is None:
            conf = self.conf
            self._router = Router(
                conf.task_routes,
                default_queue=conf.task_default_queue,
                default_exchange=conf.task_default_exchange,
                default_routing_key=conf.task_default_routing_key,
            )
        return self._router

    @property
    def control(self) -> Control:
        from celeriac.app.control import Control

        if self._control is None:
            self._control = Control(self)
        return self._control

    @property
    def thread_oid(self) -> str:
        """A name unique to this app, process and thread (Celery's `reply_to`)."""
        local = self._local
        pid = os.getpid()
        if getattr(local, "pid", None) != pid:
            local.pid = pid
            local.oid = str(
                uuid.uuid3(
                    uuid.NAMESPACE_OID,
                    f"{_default_nodename()}-{pid}-{threading.get_ident()}-{id(self)}",
                )
            )
        oid: str = local.oid
        return oid

    def send_conf(self) -> _SendConf:
        """The settings the send path reads, cached until a setting changes."""
        cached = self._send_conf
        conf = self.conf
        if cached is None or cached.version != conf.version:
            policy = {
                "max_retries": 3,
                "interval_start": 0.0,
                "interval_step": 0.2,
                "interval_max": 1.0,
                **conf.task_publish_retry_policy,
            }
            cached = self._send_conf = _SendConf(
                version=conf.version,
                always_eager=conf.task_always_eager,
                serializer=conf.task_serializer,
                compression=conf.task_compression,
                max_size=conf.task_max_message_size,
                default_priority=conf.task_default_priority,
                inherit_priority=conf.task_inherit_parent_priority,
                publish_retry=conf.task_publish_retry,
                retry_policy=policy,
                uses_rpc=self.result_backend_url.startswith("rpc://"),
            )
        return cached

    def default_reply_to(self) -> str:
        """The `reply_to` of messages sent from here: with `rpc://` results, this
        process's reply queue (declared before the first message goes out, so no result
        can arrive before it exists); otherwise `thread_oid`, as Celery writes."""
        if not self.send_conf().uses_rpc:
            return self.thread_oid
        cached = self._rpc_reply_to
        pid = os.getpid()
        if cached is None or cached[0] != pid:
            queue = self.backend.reply_queue() or self.thread_oid
            cached = self._rpc_reply_to = (pid, queue)
        return cached[1]

    def close(self) -> None:
        """Close this process's connections."""
        with self._lock:
            if self._broker is not None:
                self._broker.close()
                self._broker = None
            if self._backend is not None:
                self._backend.close()
                self._backend = None

    def now(self) -> datetime:
        return utcnow()

    # -- results and signatures -------------------------------------------------------

    def AsyncResult(self, task_id: str, **kwargs: Any) -> _result.AsyncResult[Any]:
        from celeriac.result import AsyncResult

        return AsyncResult(task_id, app=self, **kwargs)

    def GroupResult(
        self, group_id: str, results: Sequence[_result.AsyncResult[Any]]
    ) -> _result.GroupResult:
        from celeriac.result import GroupResult

        return GroupResult(group_id, results, app=self)

    def signature(
        self,
        name: str | Mapping[str, Any],
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature[Any]:
        from celeriac.canvas import signature

        return signature(name, args, kwargs, app=self, **options)

    # -- sending ---------------------------------------------------------------------

    @contextlib.contextmanager
    def producer_batch(self) -> Iterator[None]:
        """Collect every publish inside the block and send them in one round trip per
        `BATCH_FLUSH_SIZE` messages (a large group is sent in slices as it is built, so
        workers start on the first slice while the client builds the next)."""
        if _batch.get() is not None:
            yield  # nested: the outer batch sends everything
            return
        items: list[Outgoing] = []
        token = _batch.set(items)
        try:
            yield
        finally:
            _batch.reset(token)
        if items:
            self._with_publish_retry(lambda: self.broker.publish_many(items))

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        _task: Task[Any, Any] | None = None,
        **options: Any,
    ) -> _result.AsyncResult[Any]:
        """Send task `name` by name (it need not be importable here).

        Accepts the options of `Task.apply_async`.
        """
        from celeriac.result import AsyncResult

        args = list(args or ())
        kwargs = dict(kwargs or {})
        if _task is None:
            known = self.tasks.get(name)
            if known is not None:
                for key in (
                    "queue",
                    "priority",
                    "expires",
                    "serializer",
                    "time_limit",
                    "soft_time_limit",
                ):
                    if options.get(key) is None and getattr(known, key) is not None:
                        options[key] = getattr(known, key)
        call, route_queue, eta, exchange, routing_key = self._build_call(
            name, args, kwargs, options, task=_task
        )
        send_conf = self.send_conf()
        message = encode_task(
            call,
            serializer=options.get("serializer") or send_conf.serializer,
            compression=options.get("compression") or send_conf.compression,
            max_size=send_conf.max_size,
        )
        deliver_at = eta if eta is not None and eta > utcnow() else None
        outgoing = Outgoing(
            message,
            queue=route_queue,
            eta=deliver_at,
            priority=call.priority,
            exchange=exchange,
            routing_key=routing_key,
        )
        if signals.before_task_publish.receivers:
            signals.before_task_publish.send(
                sender=name,
                body=message.body,
                exchange=exchange,
                routing_key=routing_key,
                headers=message.headers,
                properties=message.properties,
                declare=[route_queue],
                retry_policy=None,
            )
        batch = _batch.get()
        if batch is not None:
            batch.append(outgoing)
            if len(batch) >= BATCH_FLUSH_SIZE:
                # Workers start on these while the rest of the batch is built.
                self._with_publish_retry(lambda: self.broker.publish_many(batch))
                batch.clear()
        else:
            self._with_publish_retry(
                lambda: self.broker.publish(
                    message,
                    queue=route_queue,
                    eta=deliver_at,
                    priority=call.priority,
                    exchange=exchange,
                    routing_key=routing_key,
                )
            )
        if signals.after_task_publish.receivers:
            signals.after_task_publish.send(
                sender=name,
                body=message.body,
                exchange=exchange,
                routing_key=routing_key,
                headers=message.headers,
            )
        parent = current_request()
        if parent is not None and parent.id and options.get("add_to_parent", True):
            parent.children.append([[call.id, None], None])
        return AsyncResult(call.id, app=self, task_name=name)

    def _build_call(
        self,
        name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        *,
        task: Task[Any, Any] | None,
    ) -> tuple[TaskCall, str, datetime | None, str, str]:
        send_conf = self.send_conf()
        task_id = options.get("task_id") or str(uuid.uuid4())
        parent = current_request()
        parent_id = options.get("parent_id")
        root_id = options.get("root_id")
        if parent is not None and parent.id and not parent.called_directly:
            parent_id = parent_id or parent.id
            root_id = root_id or parent.root_id or parent.id
        now = utcnow()
        eta = options.get("eta")
        countdown = options.get("countdown")
        if countdown is not None:
            eta = now + timedelta(seconds=float(countdown))
        elif isinstance(eta, datetime) and eta.tzinfo is None:
            eta = eta.replace(tzinfo=UTC)
        elif eta is not None and not isinstance(eta, datetime):
            raise ImproperlyConfigured(f"eta must be a datetime, got {eta!r}")
        expires = _instant(options.get("expires"), now=now, what="expires")
        route = self.router.route(name, args, kwargs, options, task=task)
        priority = route.priority
        if priority is None:
            priority = send_conf.default_priority
        if priority is None and send_conf.inherit_priority and parent is not None:
            priority = parent.priority
        time_limit = options.get("time_limit")
        soft_time_limit = options.get("soft_time_limit")
        call = TaskCall(
            name=name,
            id=task_id,
            args=args,
            kwargs=kwargs,
            callbacks=_signature_dicts(options.get("link")),
            errbacks=_signature_dicts(options.get("link_error")),
            chain=options.get("chain") or None,
            chord=dict(options["chord"]) if options.get("chord") else None,
            eta=eta,
            expires=expires,
            retries=int(options.get("retries") or 0),
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            group=options.get("group_id"),
            group_index=options.get("group_index"),
            root_id=root_id or task_id,
            parent_id=parent_id,
            shadow=options.get("shadow"),
            ignore_result=options.get("ignore_result"),
            reply_to=options.get("reply_to") or self.default_reply_to(),
            priority=priority,
            headers=dict(options.get("headers") or {}),
            stamped_headers=options.get("stamped_headers"),
            stamps=dict(options.get("stamps") or {}),
            replaced_task_nesting=int(options.get("replaced_task_nesting") or 0),
        )
        return call, route.queue, eta, route.exchange, route.routing_key

    def _with_publish_retry(self, publish: Callable[[], None]) -> None:
        try:
            publish()
            return
        except BrokerConnectionError:
            send_conf = self.send_conf()
            if not send_conf.publish_retry:
                raise
        policy = send_conf.retry_policy
        interval = float(policy["interval_start"])
        attempts = 0
        while True:
            try:
                publish()
                return
            except BrokerConnectionError:
                attempts += 1
                if policy["max_retries"] is not None and attempts > policy["max_retries"]:
                    raise
                time.sleep(interval)
                interval = min(
                    interval + float(policy["interval_step"]), float(policy["interval_max"])
                )

    def send_retry(
        self,
        task: Task[Any, Any],
        request: Context,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        eta: datetime | None,
        countdown: float | None,
        **options: Any,
    ) -> None:
        """Publish a retry of the running `request`: same id, `retries + 1`."""
        delivery = request.delivery_info or {}
        retry_options: dict[str, Any] = {
            "task_id": request.id,
            "retries": request.retries + 1,
            # The queue it came from (a routing key names a queue only on the default
            # exchange, Celery's rule).
            "queue": request.queue
            or (delivery.get("routing_key") if not delivery.get("exchange") else None),
            "priority": request.priority,
            "link": request.callbacks,
            "link_error": request.errbacks,
            "chain": request.chain,
            "chord": request.chord,
            "group_id": request.group,
            "group_index": request.group_index,
            "root_id": request.root_id,
            "parent_id": request.parent_id,
            "headers": request.headers,
            "stamps": request.stamps,
            "stamped_headers": request.stamped_headers,
            "time_limit": request.timelimit[0],
            "soft_time_limit": request.timelimit[1],
            "reply_to": request.reply_to,
            "ignore_result": request.ignore_result,
            "shadow": request.shadow,
            "add_to_parent": False,
        }
        if eta is not None:
            retry_options["eta"] = eta
        else:
            retry_options["countdown"] = countdown
        retry_options.update(options)
        self.send_task(task.name, args, kwargs, _task=task, **retry_options)


@dataclass(frozen=True, slots=True)
class _SendConf:
    """The settings `send_task` reads, snapshotted (see `Celeriac.send_conf`)."""

    version: int
    always_eager: bool
    serializer: str
    compression: str | None
    max_size: int | None
    default_priority: int | None
    inherit_priority: bool
    publish_retry: bool
    retry_policy: dict[str, Any]
    uses_rpc: bool


def _instant(value: Any, *, now: datetime, what: str) -> datetime | None:
    """An aware instant from seconds-from-now, a timedelta, or a datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, timedelta):
        return now + value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return now + timedelta(seconds=float(value))
    raise ImproperlyConfigured(f"{what} must be seconds, a timedelta or a datetime, got {value!r}")


def _signature_dicts(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return [dict(value)]
    dicts = [dict(v) for v in value]
    return dicts or None


def _is_module(value: Any) -> bool:
    return type(value).__name__ == "module"


def _is_coroutine_function(fun: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fun)


@overload
def shared_task(fun: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...


@overload
def shared_task(fun: Callable[P, R], /) -> Task[P, R]: ...


@overload
def shared_task(*, bind: Literal[True], **options: Unpack[TaskOptions]) -> BoundTaskDecorator: ...


@overload
def shared_task(
    *, bind: Literal[False] = False, **options: Unpack[TaskOptions]
) -> TaskDecorator: ...


def shared_task(*args: Any, **options: Any) -> Any:
    """Define a task usable by every app (Celery's `shared_task`)."""

    def create(fun: Callable[..., Any]) -> Task[Any, Any]:
        _shared_tasks.append((fun, options))
        created: Task[Any, Any] | None = None
        for app in list(_all_apps):
            created = app._create_task(fun, shared=True, **dict(options))
        if created is None:
            created = current_app()._create_task(fun, shared=True, **dict(options))
        return created

    if len(args) == 1 and callable(args[0]) and not options:
        return create(args[0])
    return create
