"""The worker side of remote control: Celery's pidbox commands, answered on a thread.

`ControlServer` listens on the broker's broadcast channel as node `name@host`, runs each
command addressed to it (`destination`, or `pattern` + `matcher`) and, when the sender
asked for a reply, answers `{node: value}` with the command's ticket, exactly as kombu's
`Node.dispatch` does: a failing or unknown command answers `{"error": repr}`. It runs in
the process that knows every task of the worker: the prefork supervisor (it reads what
each child runs from the slot table, so asking never stops work) or the process of the
solo, threads and asyncio pools. What a command needs from the pool is the small
`WorkerState` protocol.

The commands and their replies follow `celery/worker/control.py` (spec §5.4); the ones
that change the worker (`rate_limit`, `time_limit`, `enable_events`, `add_consumer`, ...)
are applied here and handed to the pool, which passes them on to prefork children.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import platform
import re
import resource
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from celeriac._version import __version__
from celeriac.brokers.mailbox import pack, unpack
from celeriac.exceptions import BrokerError, CeleriacError
from celeriac.protocol.serializers import normalize_accept

if TYPE_CHECKING:
    from collections.abc import Callable

    from celeriac.app.base import Celeriac
    from celeriac.brokers.base import Delivery
    from celeriac.brokers.mailbox import Mailbox
    from celeriac.protocol.message import Message
    from celeriac.worker.consumer import Consumer
    from celeriac.worker.events import EventDispatcher
    from celeriac.worker.execute import Executor
    from celeriac.worker.options import WorkerOptions
    from celeriac.worker.slots import RunningTask

__all__ = ["COMMANDS", "ControlServer", "LamportClock", "WorkerState"]

logger = logging.getLogger("celeriac.worker")

# How long one wait for commands blocks: bounds how fast `stop` is noticed.
LISTEN_TIMEOUT = 0.5
# Pause before listening again after the broker went away.
RECONNECT_PAUSE = 1.0


class LamportClock:
    """Celery's logical clock: forwarded on every send, adjusted on every receive."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def forward(self) -> int:
        with self._lock:
            self.value += 1
            return self.value

    def adjust(self, other: object) -> None:
        if isinstance(other, int) and not isinstance(other, bool):
            with self._lock:
                self.value = max(self.value, other) + 1


class WorkerState(Protocol):
    """What remote control asks of a pool."""

    def active_requests(self) -> list[dict[str, Any]]:
        """`Request.info()` of every task running now."""

    def reserved_requests(self) -> list[dict[str, Any]]:
        """`Request.info()` of every task prefetched and not started."""

    def processed(self) -> dict[str, int]:
        """Tasks handled so far, by name."""

    def processes(self) -> list[int]:
        """Pids of the processes that run tasks."""

    def request_shutdown(self) -> None:
        """Begin a warm shutdown."""

    def forward_control(self, method: str, arguments: dict[str, Any]) -> None:
        """Pass a change made by `method` on to the processes running tasks."""


class ControlServer:
    """Answers remote control commands for one worker, on its own thread.

    Args:
        app: The worker's app.
        options: The worker's options (node name, pool, queues).
        state: The pool, for what runs and for changes.
        mailbox: The broker's broadcast channel (this server owns and closes it).
        events: The worker's event dispatcher (enable/disable_events, heartbeat).
    """

    def __init__(
        self,
        app: Celeriac,
        options: WorkerOptions,
        state: WorkerState,
        mailbox: Mailbox,
        *,
        events: EventDispatcher | None = None,
        clock: LamportClock | None = None,
    ) -> None:
        self.app = app
        self.options = options
        self.hostname = options.hostname
        self.state = state
        self.mailbox = mailbox
        self.events = events
        self.clock = clock or LamportClock()
        self.queues = list(options.queues)
        self.started = time.monotonic()
        self.revoked_ids: dict[str, float] = {}
        self._accept = normalize_accept(app.conf.accept_content)
        self._serializer = str(app.conf.task_serializer)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- thread -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="celeriac-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            self.mailbox.close()
        except Exception:  # closing is best effort
            logger.debug("error while closing the control mailbox", exc_info=True)

    def _run(self) -> None:
        listening = False
        while not self._stop.is_set():
            try:
                if not listening:
                    self.mailbox.listen(self.hostname)
                    listening = True
                for message in self.mailbox.receive_commands(timeout=LISTEN_TIMEOUT):
                    self.handle_message(message)
            except BrokerError as exc:
                if listening:
                    logger.warning("Remote control: broker unreachable (%s); retrying", exc)
                listening = False
                with contextlib.suppress(Exception):
                    self.mailbox.close()
                self._stop.wait(RECONNECT_PAUSE)
            except Exception:  # isolation boundary: the control thread must live on
                logger.exception("Remote control hiccup; continuing")
                self._stop.wait(RECONNECT_PAUSE)

    # -- dispatch -----------------------------------------------------------------------

    def handle_message(self, message: Message) -> None:
        """Run one command message if it is addressed to this node; reply if asked."""
        self.clock.adjust(message.headers.get("clock"))
        try:
            body = unpack(message, accept=self._accept)
        except CeleriacError as exc:
            logger.warning("Remote control: cannot decode a command: %s", exc)
            return
        if not isinstance(body, dict) or not self.is_addressed(body):
            return
        method = str(body.get("method"))
        arguments = body.get("arguments") or {}
        reply_to = body.get("reply_to")
        logger.debug("Remote control: %s(%r) reply_to=%r", method, arguments, reply_to)
        try:
            reply = self.dispatch(method, arguments if isinstance(arguments, dict) else {})
        except _NoReply:
            return
        except Exception as exc:  # isolation boundary: one bad command answers an error
            logger.exception("Remote control command %s failed", method)
            reply = {"error": repr(exc)}
        if isinstance(reply_to, dict) and reply_to.get("routing_key"):
            out = pack(
                {self.hostname: reply},
                headers={"ticket": body.get("ticket"), "clock": self.clock.forward()},
                serializer=self._serializer,
            )
            self.mailbox.reply(
                str(reply_to.get("exchange") or self.mailbox.reply_exchange),
                str(reply_to["routing_key"]),
                out,
            )

    def is_addressed(self, body: dict[str, Any]) -> bool:
        destination = body.get("destination")
        if destination:
            return self.hostname in destination
        pattern, matcher = body.get("pattern"), body.get("matcher")
        if pattern and matcher:
            if matcher == "pcre":
                return re.search(str(pattern), self.hostname) is not None
            return fnmatch.fnmatch(self.hostname, str(pattern))
        return True

    def dispatch(self, method: str, arguments: dict[str, Any]) -> Any:
        handler = COMMANDS.get(method)
        if handler is None:
            # kombu answers an unknown method with the KeyError it raised.
            raise KeyError(method)
        return handler(self, **arguments)

    # -- what several commands share ----------------------------------------------------

    def request_info(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return self.state.active_requests(), self.state.reserved_requests()

    def revoke(self, task_ids: list[str], *, terminate: bool) -> None:
        now = time.time()
        for task_id in task_ids:
            self.revoked_ids[task_id] = now
        self.app.control.record_revoked(task_ids, terminate=terminate)


class _NoReply(Exception):
    """The command answers nothing (shutdown)."""


# -- commands ---------------------------------------------------------------------------

COMMANDS: dict[str, Callable[..., Any]] = {}


F = TypeVar("F", bound="Callable[..., Any]")


def command(*names: str) -> Callable[[F], F]:
    def register(fun: F) -> F:
        for name in names:
            COMMANDS[name] = fun
        return fun

    return register


def _ok(value: Any) -> dict[str, Any]:
    return {"ok": value}


@command("ping")
def ping(server: ControlServer, **kwargs: Any) -> dict[str, Any]:
    return _ok("pong")


@command("clock")
def clock(server: ControlServer, **kwargs: Any) -> dict[str, Any]:
    return {"clock": server.clock.value}


@command("hello")
def hello(server: ControlServer, from_node: str | None = None, revoked: Any = None) -> Any:
    if from_node == server.hostname:
        return None
    return {"revoked": dict(server.revoked_ids), "clock": server.clock.forward()}


@command("stats")
def stats(server: ControlServer, **kwargs: Any) -> dict[str, Any]:
    options = server.options
    usage = resource.getrusage(resource.RUSAGE_SELF)
    from celeriac._urls import redact_url

    url = redact_url(server.app.broker_url)
    scheme, _, rest = url.partition("://")
    host = rest.rsplit("@", 1)[-1].split("/", 1)[0]
    hostname, _, port = host.partition(":")
    return {
        "total": server.state.processed(),
        "pid": os.getpid(),
        "clock": str(server.clock.value),
        "uptime": int(time.monotonic() - server.started),
        "pool": {
            "implementation": f"celeriac:{options.pool}",
            "max-concurrency": options.concurrency,
            "processes": server.state.processes(),
            "max-tasks-per-child": options.max_tasks_per_child,
            "put-guarded-by-semaphore": False,
            "timeouts": [options.soft_time_limit or 0, options.time_limit or 0],
        },
        "broker": {
            "hostname": hostname,
            "userid": None,
            "virtual_host": rest.split("/", 1)[1] if "/" in rest else "/",
            "port": int(port) if port.isdigit() else None,
            "insist": False,
            "ssl": scheme in ("rediss", "amqps"),
            "transport": scheme,
            "connect_timeout": server.app.conf.broker_connection_timeout,
            "transport_options": {},
            "login_method": None,
            "uri_prefix": None,
            "heartbeat": server.app.conf.broker_heartbeat,
            "failover_strategy": "round-robin",
            "alternates": [],
        },
        "prefetch_count": options.concurrency * options.prefetch_multiplier,
        "rusage": {
            "utime": usage.ru_utime,
            "stime": usage.ru_stime,
            "maxrss": usage.ru_maxrss,
            "ixrss": usage.ru_ixrss,
            "idrss": usage.ru_idrss,
            "isrss": usage.ru_isrss,
            "minflt": usage.ru_minflt,
            "majflt": usage.ru_majflt,
            "nswap": usage.ru_nswap,
            "inblock": usage.ru_inblock,
            "oublock": usage.ru_oublock,
            "msgsnd": usage.ru_msgsnd,
            "msgrcv": usage.ru_msgrcv,
            "nsignals": usage.ru_nsignals,
            "nvcsw": usage.ru_nvcsw,
            "nivcsw": usage.ru_nivcsw,
        },
        "sw_ident": "celeriac",
        "sw_ver": __version__,
    }


@command("active", "dump_active")
def active(server: ControlServer, safe: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
    return server.state.active_requests()


@command("reserved", "dump_reserved")
def reserved(server: ControlServer, safe: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
    return server.state.reserved_requests()


@command("scheduled", "dump_schedule")
def scheduled(server: ControlServer, safe: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
    # ETA tasks wait broker-side, never in a worker's memory: there is nothing to list.
    return []


@command("revoked", "dump_revoked")
def revoked(server: ControlServer, **kwargs: Any) -> list[str]:
    return list(server.revoked_ids)


@command("registered", "dump_tasks")
def registered(
    server: ControlServer, taskinfoitems: Any = None, builtins: bool = False, **kwargs: Any
) -> list[str]:
    tasks = server.app.tasks
    names = sorted(tasks) if builtins else tasks.user_tasks()
    items = list(taskinfoitems or ())
    if not items:
        return names
    out = []
    for name in names:
        task = tasks[name]
        fields = [f"{item}={getattr(task, item)}" for item in items if getattr(task, item, None)]
        out.append(f"{name} [{' '.join(fields)}]" if fields else name)
    return out


@command("query_task")
def query_task(server: ControlServer, ids: Any = None, **kwargs: Any) -> dict[str, Any]:
    wanted = {ids} if isinstance(ids, str) else set(ids or ())
    active_now, reserved_now = server.request_info()
    found: dict[str, Any] = {}
    for state, requests in (("active", active_now), ("reserved", reserved_now)):
        for info in requests:
            if info.get("id") in wanted:
                found[info["id"]] = [state, info]
    return found


@command("conf")
def conf(server: ControlServer, with_defaults: bool = False, **kwargs: Any) -> dict[str, Any]:
    from celeriac._urls import redact_url

    settings = server.app.conf
    keys = list(settings) if with_defaults else list(settings.changes())
    out: dict[str, Any] = {}
    for key in sorted(keys):
        value = settings.get(key)
        if isinstance(value, str) and "://" in value:
            value = redact_url(value)
        if _jsonable(value):
            out[key] = value
        else:
            out[key] = repr(value)
    return out


def _jsonable(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_jsonable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return False


@command("report")
def report(server: ControlServer, **kwargs: Any) -> dict[str, Any]:
    text = (
        f"software -> celeriac:{__version__} python:{platform.python_version()}\n"
        f"platform -> system:{platform.system()} arch:{platform.machine()} "
        f"imp:{platform.python_implementation()}\n"
        f"pool -> {server.options.pool} concurrency:{server.options.concurrency}\n"
        f"{server.app.conf.humanize()}\n"
    )
    return _ok(text)


@command("revoke")
def revoke(
    server: ControlServer,
    task_id: Any = None,
    terminate: bool = False,
    signal: Any = None,
    **kwargs: Any,
) -> dict[str, Any]:
    ids = [task_id] if isinstance(task_id, str) else [str(t) for t in task_id or ()]
    server.revoke(ids, terminate=bool(terminate))
    listed = ", ".join(repr(i) for i in ids)
    if terminate:
        return _ok(f"terminate: tasks {{{listed}}} flagged as revoked")
    return _ok(f"tasks {{{listed}}} flagged as revoked")


@command("terminate")
def terminate(
    server: ControlServer, signal: Any = None, task_id: Any = None, **kwargs: Any
) -> dict[str, Any]:
    return revoke(server, task_id=task_id, terminate=True, signal=signal)


@command("revoke_by_stamped_headers")
def revoke_by_stamped_headers(
    server: ControlServer, headers: Any = None, terminate: bool = False, **kwargs: Any
) -> dict[str, Any]:
    wanted = headers if isinstance(headers, dict) else {}
    ids = []
    active_now, reserved_now = server.request_info()
    for info in (*active_now, *reserved_now):
        stamps = info.get("stamps") or {}
        if wanted and all(
            stamps.get(k) == v or (isinstance(v, list) and stamps.get(k) in v)
            for k, v in wanted.items()
        ):
            ids.append(str(info["id"]))
    if ids:
        server.revoke(ids, terminate=bool(terminate))
    return _ok(f"headers {wanted!r} flagged as revoked")


@command("rate_limit")
def rate_limit(
    server: ControlServer, task_name: str = "", rate_limit: Any = None, **kwargs: Any
) -> dict[str, Any]:
    task = server.app.tasks.get(task_name) if task_name else None
    if task is None:
        return {"error": f"unknown task {task_name!r}"}
    from celeriac.app.ratelimit import parse_rate

    try:
        parse_rate(rate_limit)
    except (ValueError, CeleriacError) as exc:
        return {"error": f"invalid rate limit string: {exc}"}
    task.rate_limit = rate_limit
    server.state.forward_control("rate_limit", {"task_name": task_name, "rate_limit": rate_limit})
    if not rate_limit:
        return _ok("rate limit disabled successfully")
    return _ok("new rate limit set successfully")


@command("time_limit")
def time_limit(
    server: ControlServer,
    task_name: str = "",
    soft: float | None = None,
    hard: float | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    task = server.app.tasks.get(task_name) if task_name else None
    if task is None:
        return {"error": f"unknown task {task_name!r}"}
    task.soft_time_limit = soft
    task.time_limit = hard
    server.state.forward_control("time_limit", {"task_name": task_name, "soft": soft, "hard": hard})
    return _ok("time limits set successfully")


@command("enable_events")
def enable_events(server: ControlServer, **kwargs: Any) -> dict[str, Any]:
    return _switch_task_events(server, on=True)


@command("disable_events")
def disable_events(server: ControlServer, **kwargs: Any) -> dict[str, Any]:
    return _switch_task_events(server, on=False)


def _switch_task_events(server: ControlServer, *, on: bool) -> dict[str, Any]:
    if server.events is None:
        return {"error": "events are not available on this broker"}
    conf = server.app.conf
    if server.options.pool == "prefork":
        # The children send task events; children forked later read the setting.
        was = bool(conf.worker_send_task_events)
        conf.worker_send_task_events = on
    else:
        was = server.events.task_events
        server.events.task_events = on
    word = "enabled" if on else "disabled"
    if was == on:
        return _ok(f"task events already {word}")
    server.state.forward_control("enable_events" if on else "disable_events", {})
    return _ok(f"task events {word}")


@command("heartbeat")
def heartbeat(server: ControlServer, **kwargs: Any) -> None:
    if server.events is not None:
        server.events.heartbeat_now()


@command("shutdown")
def shutdown(server: ControlServer, msg: str = "Got shutdown from remote", **kwargs: Any) -> None:
    logger.warning(msg)
    server.state.request_shutdown()
    raise _NoReply


@command("active_queues")
def active_queues(server: ControlServer, **kwargs: Any) -> list[dict[str, Any]]:
    return [queue_as_dict(name) for name in server.queues]


def queue_as_dict(name: str) -> dict[str, Any]:
    """kombu's `Queue.as_dict(recurse=True)` of a direct queue named like its exchange."""
    return {
        "name": name,
        "exchange": {
            "name": name,
            "type": "direct",
            "arguments": None,
            "durable": True,
            "passive": False,
            "auto_delete": False,
            "delivery_mode": None,
            "no_declare": False,
        },
        "routing_key": name,
        "queue_arguments": None,
        "binding_arguments": None,
        "consumer_arguments": None,
        "durable": True,
        "exclusive": False,
        "auto_delete": False,
        "no_ack": False,
        "alias": None,
        "bindings": [],
        "no_declare": None,
        "expires": None,
        "message_ttl": None,
        "max_length": None,
        "max_length_bytes": None,
        "max_priority": None,
    }


@command("add_consumer")
def add_consumer(
    server: ControlServer, queue: str = "", exchange: Any = None, **kwargs: Any
) -> dict[str, Any]:
    if not queue:
        return {"error": "add_consumer needs a queue name"}
    if exchange not in (None, "", queue):
        return {"error": f"celeriac consumes queues by name; exchange {exchange!r} is not used"}
    if queue in server.queues:
        return _ok(f"already consuming from {queue!r}")
    server.queues.append(queue)
    server.state.forward_control("add_consumer", {"queue": queue})
    return _ok(f"add consumer {queue}")


@command("cancel_consumer")
def cancel_consumer(server: ControlServer, queue: str = "", **kwargs: Any) -> dict[str, Any]:
    if queue not in server.queues:
        return {"error": f"not consuming from {queue!r}"}
    if len(server.queues) == 1:
        return {"error": f"{queue!r} is the last queue this worker consumes"}
    server.queues.remove(queue)
    server.state.forward_control("cancel_consumer", {"queue": queue})
    return _ok(f"no longer consuming from {queue}")


def _no_pool_resize(server: ControlServer, **kwargs: Any) -> dict[str, Any]:
    # Loud, never silent: the pool size is fixed for the worker's life.
    return {"error": f"the {server.options.pool} pool cannot change its size at run time"}


for _name in ("pool_grow", "pool_shrink", "autoscale", "pool_restart"):
    COMMANDS[_name] = _no_pool_resize


def request_info(delivery: Delivery, hostname: str, worker_pid: int | None) -> dict[str, Any]:
    """Celery's `Request.info()` of a held delivery."""
    headers = delivery.message.headers
    return {
        "id": headers.get("id"),
        "name": headers.get("task"),
        "args": headers.get("argsrepr"),
        "kwargs": headers.get("kwargsrepr"),
        "type": headers.get("task"),
        "hostname": hostname,
        "time_start": None,
        "acknowledged": False,
        "delivery_info": {
            "exchange": delivery.exchange,
            "routing_key": delivery.routing_key,
            "priority": delivery.message.priority,
            "redelivered": delivery.redelivered,
        },
        "worker_pid": worker_pid,
    }


def running_info(running: RunningTask, hostname: str, worker_pid: int) -> dict[str, Any]:
    """Celery's `Request.info()` of what a prefork child runs (from the slot table)."""
    return {
        "id": running.task_id,
        "name": running.name,
        "args": None,
        "kwargs": None,
        "type": running.name,
        "hostname": hostname,
        "time_start": running.started,
        "acknowledged": False,
        "delivery_info": None,
        "worker_pid": worker_pid,
    }


def apply_control(
    app: Celeriac,
    consumer: Consumer | None,
    executor: Executor | None,
    method: str,
    arguments: dict[str, Any],
    *,
    events: EventDispatcher | None = None,
) -> None:
    """Apply a change made by remote control in a process that runs tasks."""
    if method == "rate_limit":
        name = str(arguments.get("task_name"))
        task = app.tasks.get(name)
        if task is not None:
            task.rate_limit = arguments.get("rate_limit")
        if executor is not None:
            executor.set_rate_limit(name, arguments.get("rate_limit"))
    elif method == "time_limit":
        task = app.tasks.get(str(arguments.get("task_name")))
        if task is not None:
            task.soft_time_limit = arguments.get("soft")
            task.time_limit = arguments.get("hard")
    elif method in ("enable_events", "disable_events"):
        if events is not None:
            events.task_events = method == "enable_events"
    elif method == "add_consumer" and consumer is not None:
        queue = str(arguments.get("queue"))
        if queue not in consumer.queues:
            consumer.queues = [*consumer.queues, queue]
    elif method == "cancel_consumer" and consumer is not None:
        queue = str(arguments.get("queue"))
        if queue in consumer.queues and len(consumer.queues) > 1:
            consumer.queues = [q for q in consumer.queues if q != queue]


# How often a prefork child reads the changes its supervisor passed on.
CONTROL_PIPE_INTERVAL = 0.3


class ControlPipe:
    """A prefork child's end of the pipe its supervisor passes remote control changes on."""

    def __init__(
        self,
        fd: int,
        app: Celeriac,
        consumer: Consumer,
        events: EventDispatcher | None,
    ) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.app = app
        self.consumer = consumer
        self.events = events
        self._partial = b""

    def read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                change = json.loads(line)
                apply_control(
                    self.app,
                    self.consumer,
                    self.consumer.executor,
                    str(change["method"]),
                    dict(change["arguments"]),
                    events=self.events,
                )
            except Exception:  # isolation boundary: a bad line must not stop the child
                logger.exception("Could not apply a remote control change")


def event_mailbox(app: Celeriac) -> Mailbox | None:
    """A broadcast channel for this process, or None on brokers without one."""
    from celeriac.brokers.mailbox import open_mailbox, supports_mailbox

    if not supports_mailbox(app.broker_url):
        return None
    conf = app.conf
    return open_mailbox(
        app.broker_url,
        transport_options=app.broker_transport_options(),
        namespace=str(conf.get("control_exchange") or "celery"),
        event_exchange=str(conf.get("event_exchange") or "celeryev"),
    )


def task_event_dispatcher(app: Celeriac, hostname: str) -> EventDispatcher | None:
    """The task event sender of a process that runs tasks (off until enabled)."""
    from celeriac.worker.events import EventDispatcher

    mailbox = event_mailbox(app)
    if mailbox is None:
        return None
    return EventDispatcher(hostname, mailbox, task_events=bool(app.conf.worker_send_task_events))


class Remote:
    """Remote control and worker events of one running worker."""

    def __init__(self, server: ControlServer, events: EventDispatcher) -> None:
        self.server = server
        self.events = events

    def stop(self) -> None:
        self.events.stop()
        self.server.stop()


def start_remote(app: Celeriac, options: WorkerOptions, pool: Any) -> Remote | None:
    """Start answering remote control and sending worker events, where the broker has a
    broadcast channel (Redis, RabbitMQ) and `worker_enable_remote_control` is on."""
    from celeriac.worker.events import EventDispatcher

    if not app.conf.get("worker_enable_remote_control", True):
        return None
    mailbox = event_mailbox(app)
    if mailbox is None:
        return None
    clock = LamportClock()

    def counts() -> tuple[int, int]:
        return len(pool.active_requests()), pool.processed_count()

    # Prefork children send their own task events; this process sends the worker's.
    in_process = options.pool != "prefork"
    events = EventDispatcher(
        options.hostname,
        mailbox,
        task_events=in_process and bool(app.conf.worker_send_task_events),
        counts=counts,
        clock=clock.forward,
    )
    server = ControlServer(app, options, pool, mailbox, events=events, clock=clock)
    server.start()
    if not options.without_heartbeat:
        events.start()
    else:
        events.send("worker-online", **events.worker_fields())
    return Remote(server, events)
