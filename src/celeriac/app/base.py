"""The application: settings, task registry, lazy broker/backend handles, autodiscovery.

`Celeriac(main, broker=None, backend=None, include=(), **settings)` (also exported as
`Celery`). With no broker URL anywhere (argument, settings, `CELERIAC_BROKER_URL`), the
app uses the embedded default: the SQLite file `celeriac.db` in the current directory as
broker and result backend. A backend left unset follows the broker (`redis://` → the
same Redis, `sqlite://` → the same file, `amqp://` → `rpc://`).

Nothing connects at import or construction; the broker and backend are made on first use
in each process (and made again after `fork()`). Sending lives in `celeriac.app.send`
(the app's `sender`).
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import threading
import uuid
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, overload

from celeriac._imports import import_object
from celeriac._time import utcnow
from celeriac.app.config import Settings
from celeriac.app.registry import TaskRegistry
from celeriac.app.routing import Router
from celeriac.app.send import Sender
from celeriac.app.task import AsyncTask, Task, TaskOptions
from celeriac.exceptions import ImproperlyConfigured

if sys.version_info >= (3, 11):
    from typing import ParamSpec, Unpack
else:  # pragma: no cover
    from typing_extensions import ParamSpec, Unpack

if TYPE_CHECKING:
    import contextlib
    from datetime import datetime

    from celeriac import result as _result
    from celeriac.app.control import Control
    from celeriac.app.events import Events
    from celeriac.app.send import SendConf
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
        self.sender = Sender(self)
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
    def events(self) -> Events:
        """`app.events`: `Receiver` and `State` for reading worker and task events."""
        from celeriac.app.events import Events

        return Events(self)

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

    def send_conf(self) -> SendConf:
        """The settings the send path reads, cached until a setting changes."""
        return self.sender.conf()

    def default_reply_to(self) -> str:
        """The `reply_to` of messages sent from here (see `Sender.default_reply_to`)."""
        return self.sender.default_reply_to()

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

    def producer_batch(self) -> contextlib.AbstractContextManager[None]:
        """Collect every publish inside the block and send them in one round trip per
        `BATCH_FLUSH_SIZE` messages (a large group is sent in slices as it is built, so
        workers start on the first slice while the client builds the next)."""
        return self.sender.batch()

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
        return self.sender.send_task(name, args, kwargs, _task, options)


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
