"""The commands a worker answers, by Celery's names, and the shapes of their replies.

They follow `celery/worker/control.py` (spec §5.4). Each takes the `ControlServer` and
the command's arguments; what it returns is the reply. The ones that change the worker
(`rate_limit`, `time_limit`, `enable_events`, `add_consumer`, ...) apply the change here
and hand it to the pool (`WorkerState.forward_control`), which passes it on to prefork
children (see `changes.py`).
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import time
from typing import TYPE_CHECKING, Any, TypeVar

from celeriac._version import __version__
from celeriac.exceptions import CeleriacError

if TYPE_CHECKING:
    from collections.abc import Callable

    from celeriac.brokers.base import Delivery
    from celeriac.worker.control.server import ControlServer
    from celeriac.worker.slots import RunningTask

logger = logging.getLogger("celeriac.worker")

__all__ = ["COMMANDS", "NoReply", "queue_as_dict", "request_info", "running_info"]


class NoReply(Exception):
    """The command answers nothing (shutdown)."""


# Command name -> handler (`command` registers them).
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
    size = server.state.pool_size()
    reply = {
        "total": server.state.processed(),
        "pid": os.getpid(),
        "clock": str(server.clock.value),
        "uptime": int(time.monotonic() - server.started),
        "pool": {
            "implementation": f"celeriac:{options.pool}",
            "max-concurrency": size.wanted() if size is not None else options.concurrency,
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
        "prefetch_count": (size.wanted() if size is not None else options.concurrency)
        * options.prefetch_multiplier,
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
    autoscaler = size.info() if size is not None else None
    if autoscaler is not None:
        reply["autoscaler"] = autoscaler
    return reply


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
    # A prefork worker's heartbeats come from its first child.
    server.state.forward_control("heartbeat", {})


@command("shutdown")
def shutdown(server: ControlServer, msg: str = "Got shutdown from remote", **kwargs: Any) -> None:
    logger.warning(msg)
    server.state.request_shutdown()
    raise NoReply


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


def _fixed_size(server: ControlServer) -> dict[str, Any]:
    # Loud, never silent: only prefork children come and go at run time.
    return {"error": f"the {server.options.pool} pool cannot change its size at run time"}


def _count(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} takes a whole number, got {value!r}") from None


@command("pool_grow")
def pool_grow(server: ControlServer, n: Any = 1, **kwargs: Any) -> dict[str, Any]:
    size = server.state.pool_size()
    if size is None:
        return _fixed_size(server)
    try:
        size.grow(_count(n, "pool_grow"))
    except ValueError as exc:
        return {"error": str(exc)}
    return _ok("pool will grow")


@command("pool_shrink")
def pool_shrink(server: ControlServer, n: Any = 1, **kwargs: Any) -> dict[str, Any]:
    size = server.state.pool_size()
    if size is None:
        return _fixed_size(server)
    try:
        size.shrink(_count(n, "pool_shrink"))
    except ValueError as exc:
        return {"error": str(exc)}
    return _ok("pool will shrink")


@command("autoscale")
def autoscale(
    server: ControlServer, max: Any = None, min: Any = None, **kwargs: Any
) -> dict[str, Any]:
    size = server.state.pool_size()
    if size is None:
        return _fixed_size(server)
    try:
        high = None if max is None else _count(max, "autoscale max")
        low = None if min is None else _count(min, "autoscale min")
        high, low = size.update(high, low)
    except ValueError as exc:
        # Celery answers kombu's repr of its ValueError ("Autoscale not enabled").
        return {"error": repr(exc)}
    return _ok(f"autoscale now max={high} min={low}")


@command("pool_restart")
def pool_restart(server: ControlServer, **kwargs: Any) -> dict[str, Any]:
    # Celery's reply when worker_pool_restarts is off, which celeriac does not offer.
    return {"error": repr(ValueError("Pool restarts not enabled"))}


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
