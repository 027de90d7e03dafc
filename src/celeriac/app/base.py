"""The application: settings, task registry, lazy broker/backend handles, autodiscovery.

`Celeriac(main, broker=None, backend=None, include=(), **settings)` (also exported as
`Celery`). With no broker URL anywhere (argument, settings, `CELERIAC_BROKER_URL`), the
app uses the embedded default: the SQLite file `celeriac.db` beside the module that
created the app, as broker and result backend (see `celeriac.app.embedded`). A backend
left unset follows the broker (`redis://` → the same Redis, `sqlite://` → the same file,
`amqp://` → `rpc://`).

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
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from celeriac._imports import import_object
from celeriac._proxy import AppProxy
from celeriac._time import UTC, utcnow
from celeriac.app.annotations import annotate
from celeriac.app.config import Settings, settings_of
from celeriac.app.discovery import Packages, discovery_packages, django_fixup, import_related
from celeriac.app.embedded import app_directory, default_url, warn_if_unshared
from celeriac.app.queues import parse_queues
from celeriac.app.registry import TaskRegistry
from celeriac.app.routing import Router
from celeriac.app.send import Sender
from celeriac.app.task_factory import create_task, task_class
from celeriac.exceptions import ImproperlyConfigured

if sys.version_info >= (3, 11):
    from typing import ParamSpec, Unpack
else:  # pragma: no cover
    from typing_extensions import ParamSpec, Unpack

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Callable, Coroutine, Mapping, Sequence
    from datetime import tzinfo

    from celeriac import result as _result
    from celeriac._time import Clock
    from celeriac.app.control import Control
    from celeriac.app.events import Events
    from celeriac.app.send import SendConf
    from celeriac.app.task import AsyncTask, Task
    from celeriac.app.task_options import BoundTaskDecorator, TaskDecorator, TaskOptions
    from celeriac.backends.base import ResultBackend
    from celeriac.brokers.base import Broker
    from celeriac.canvas import Signature

__all__ = ["Celeriac", "current_app", "get_current_app"]

P = ParamSpec("P")
R = TypeVar("R")


_current_app: ContextVar[Celeriac | None] = ContextVar("celeriac_current_app", default=None)
_default_app: Celeriac | None = None
_all_apps: weakref.WeakSet[Celeriac] = weakref.WeakSet()
_shared_tasks: list[tuple[Callable[..., Any], dict[str, Any]]] = []


def get_current_app() -> Celeriac:
    """The app in use: the one set in this context, else the last app created."""
    app = _current_app.get() or _default_app
    if app is None:
        app = Celeriac("default")
    return app


#: Celery's `current_app` proxy: `current_app.conf`, `current_app.tasks`, and
#: `current_app()` for the app itself.
current_app = AppProxy(get_current_app)


def _default_nodename() -> str:
    return socket.gethostname()


class Celeriac:
    """A Celeriac application.

    Args:
        main: Name of the main module (prefix for tasks defined in `__main__`).
        broker: Broker URL (`redis://`, `amqp://`, `sqlite:///path.db`, `memory://`).
        backend: Result backend URL (default: follows the broker).
        include: Modules a worker imports at start (where the tasks live).
        config_source: Settings to load now, as `config_from_object(config_source)`.
        strict_typing: Whether tasks check their arguments when sent (each task's
            `typing=` default).
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
        config_source: Any = None,
        strict_typing: bool = True,
        **settings: Any,
    ) -> None:
        global _default_app
        self.main = main
        # Where the embedded default's file lives: beside the module creating the app.
        self._default_directory = app_directory()
        #: Celery compat: the default of `@task(typing=...)` for this app's tasks.
        self.strict_typing = strict_typing
        self.conf = Settings(settings)
        if config_source is not None:
            self.config_from_object(config_source)
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
        self._autodiscover: list[tuple[Packages, str]] = []
        self._local = threading.local()
        self.sender = Sender(self)
        self._finalized = False
        self._django = django_fixup(self)
        # None: the system clock. Tests put a FakeClock here (`celeriac_clock`): sending
        # (ETAs), the memory broker (what is due) and workers (early and expired
        # messages) then all read it.
        self.clock: Clock | None = None
        from celeriac.signals import Signal

        # Celery's app signals (periodic tasks are usually set up in their receivers).
        self.on_after_configure = Signal("on_after_configure")
        self.on_after_finalize = Signal("on_after_finalize")
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
        values = settings_of(obj, namespace=namespace)
        self.conf.update(values)
        self._router = None

    def set_default(self) -> None:
        """Make this the app `current_app()` falls back to (Celery's `set_default`)."""
        global _default_app
        _default_app = self

    def set_current(self) -> None:
        """Make this the current app of this context (thread or asyncio task)."""
        _current_app.set(self)

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
        packages: Packages = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import `<package>.<related_name>` for each package, now (`force`) or when the
        app is finalized (a worker starting, or the first task lookup by name).

        `packages` may be a callable (called then, e.g. `lambda: settings.INSTALLED_APPS`);
        None means every installed Django app (with `DJANGO_SETTINGS_MODULE` set).
        """
        if force or self._finalized:
            import_related(discovery_packages(packages, self._django), related_name)
        else:
            self._autodiscover.append((packages, related_name))

    def finalize(self) -> None:
        """Import `include`/`imports` modules and autodiscovered task modules (once)."""
        with self._lock:
            if self._finalized:
                return
            self._finalized = True
            if self._django is not None:
                # Before any task module is imported: they may import models.
                self._django.setup()
            self.on_after_configure.send(sender=self, source=self.conf)
            for module in (*self.conf.include, *self.conf.imports):
                importlib.import_module(module)
            pending, self._autodiscover = self._autodiscover, []
            for packages, related_name in pending:
                import_related(discovery_packages(packages, self._django), related_name)
            if self.conf.task_annotations is not None:
                for name in list(self.tasks):
                    annotate(self.tasks[name], self.conf.task_annotations)
        self.on_after_finalize.send(sender=self)

    def add_periodic_task(
        self,
        schedule: Any,
        sig: Signature[Any],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        **opts: Any,
    ) -> str:
        """Add `sig` to `beat_schedule` to run on `schedule` (seconds, a timedelta,
        `crontab`, `solar`); returns the entry's name (`name`, else the signature's repr,
        as Celery). Extra keyword arguments are `apply_async` options."""
        from celeriac.beat.entries import make_entry

        sig = sig.clone(args, kwargs)
        key = name or repr(sig)
        entry = {
            "task": sig.name,
            "schedule": schedule,
            "args": tuple(sig.args),
            "kwargs": dict(sig.kwargs),
            "options": {**sig.options, **opts},
        }
        make_entry(key, entry, self)  # refuse a bad entry here, not when beat starts
        self.conf.beat_schedule = {**self.conf.beat_schedule, key: entry}
        return key

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
        return create_task(self, fun, shared=shared, **options)

    def register_task(self, task: Task[Any, Any] | type[Task[Any, Any]]) -> Task[Any, Any]:
        """Register a class-based task (an instance, or a class to instantiate).

        Celery compat: `app.register_task(MyTask())` for `class MyTask(app.Task)` with a
        `run` method; the task is bound to this app when it has none.
        """
        if isinstance(task, type):
            task = task()
        if task._app is None:
            task._app = self
        if self.conf.task_annotations is not None:
            annotate(task, self.conf.task_annotations)
        self.tasks.register(task)
        return task

    def _task_class(self, *, is_async: bool) -> type[Task[Any, Any]]:
        """The class of a new task: `task_cls` when set, else `Task` (`AsyncTask` for an
        `async def` function)."""
        return task_class(self, is_async=is_async)

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
        return self.conf.broker_url_resolved() or default_url(self._default_directory)

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
        if self.conf.broker_use_ssl:
            options.setdefault("ssl", self.conf.broker_use_ssl)
        self._add_queue_types(options)
        options.setdefault("worker_lost_after", self.conf.worker_lost_after)
        from celeriac.app.queues import queue_transport_options

        for key, value in queue_transport_options(self.conf).items():
            options[key] = {**value, **options.get(key, {})}
        return options

    def _add_queue_types(self, options: dict[str, Any]) -> None:
        """Celery 5.5's quorum-queue settings, as RabbitMQ transport options."""
        conf = self.conf
        if "quorum" not in (conf.task_default_queue_type, conf.task_create_missing_queue_type):
            return
        if self.broker_url.partition("://")[0].lower() not in ("amqp", "amqps", "pyamqp"):
            raise ImproperlyConfigured(
                "task_default_queue_type / task_create_missing_queue_type = 'quorum' are "
                "RabbitMQ settings; this broker has no quorum queues (for a replicated "
                "Redis use a sentinel:// URL)"
            )
        if conf.task_create_missing_queue_type == "quorum":
            options.setdefault("queue_type", "quorum")
        if conf.task_default_queue_type == "quorum":
            arguments = {k: dict(v) for k, v in (options.get("queue_arguments") or {}).items()}
            arguments.setdefault(conf.task_default_queue, {}).setdefault("x-queue-type", "quorum")
            options["queue_arguments"] = arguments

    def create_broker(self, *, consumer_id: str | None = None) -> Broker:
        """A new broker object for this app's URL (workers make one per consumer)."""
        from celeriac.brokers import create_broker

        if consumer_id is None and not self.conf.broker_url_resolved():
            warn_if_unshared(self._default_directory)
        return create_broker(
            self.broker_url,
            transport_options=self.broker_transport_options(),
            consumer_id=consumer_id,
            clock=self.clock,
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
            if self.conf.broker_use_ssl:
                options.setdefault("ssl", self.conf.broker_use_ssl)
        elif self.conf.redis_backend_use_ssl and self.result_backend_url.startswith(
            ("redis", "sentinel")
        ):
            options.setdefault("ssl", self.conf.redis_backend_use_ssl)
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
                queues=parse_queues(conf.task_queues),
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

    def setup_security(
        self,
        allowed_serializers: object = None,
        key: str | None = None,
        key_password: str | bytes | None = None,
        cert: str | None = None,
        store: str | None = None,
        digest: str | None = None,
        serializer: str = "json",
    ) -> None:
        """Sign task messages and accept only signed ones (Celery's `auth` serializer);
        arguments default to the `security_*` settings. See docs/security.md."""
        from celeriac.app.security import setup_security

        setup_security(
            self.conf,
            allowed_serializers=allowed_serializers,
            key=key,
            key_password=key_password,
            cert=cert,
            store=store,
            digest=digest,
            serializer=serializer,
        )

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
        """The current instant by the app's clock (aware UTC)."""
        clock = self.clock
        if clock is None:
            return utcnow()
        return datetime.fromtimestamp(clock.time(), UTC)

    @property
    def timezone(self) -> tzinfo:
        """The app's zone: schedules run in it and naive `eta=`/`expires=` datetimes are
        read in it. The zone of `timezone_name()`, else UTC (`enable_utc`, the default),
        else the machine's zone (Celery compat)."""
        from celeriac.schedules import app_timezone

        return app_timezone(self)

    def timezone_name(self) -> str | None:
        """The zone set for this app: the `timezone` setting, else Django's `TIME_ZONE`
        in a Django project, else None."""
        name: str | None = self.conf.timezone
        if not name and self._django is not None:
            name = self._django.timezone()
        return name

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

    # Last in the class: inside the class body, this property shadows the `Task` class
    # for annotations that come after it.
    @property
    def Task(self) -> type[Task[Any, Any]]:
        """A `Task` base class bound to this app, for class-based tasks."""
        cls = self.__dict__.get("_bound_task_class")
        if cls is None:
            base = self._task_class(is_async=False)  # `task_cls` when set, as Celery's
            cls = type("Task", (base,), {"_bound_app": self, "__module__": base.__module__})
            self.__dict__["_bound_task_class"] = cls
        return cls
