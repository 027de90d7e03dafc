"""Worker options: what `celeriac worker` was asked to do, with defaults from settings."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

from celeriac.app.queues import parse_queues
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac

__all__ = [
    "EVENTLET_REFUSED",
    "OPTIMIZATIONS",
    "POOL_NAMES",
    "WorkerOptions",
    "auto_concurrency",
    "expand_hostname",
    "expand_logfile",
]

# `-O`: Celery's optimization profiles. fair: a consumer holds no message beyond its free
# slots (prefetch multiplier 1); default: the prefetch multiplier as set.
OPTIMIZATIONS = ("default", "fair")

POOL_NAMES = ("prefork", "threads", "solo", "asyncio", "gevent")
EVENTLET_REFUSED = (
    "the eventlet pool is not supported: eventlet is deprecated by its own maintainers "
    "(who advise moving off it); use -P gevent for sync I/O-bound tasks, or -P asyncio "
    "for async def tasks"
)


@final
@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """Resolved worker options."""

    concurrency: int
    pool: str
    queues: tuple[str, ...]
    hostname: str
    prefetch_multiplier: int
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    without_heartbeat: bool = False
    loglevel: str = "WARNING"
    logfile: str | None = None
    #: `--autoscale`: (max, min) prefork children, following load; None: a fixed size.
    autoscale: tuple[int, int] | None = None
    #: Seconds without new work before the autoscaler retires children.
    autoscale_keepalive: float = 30.0
    extra: dict[str, str] = field(default_factory=dict)
    optimization: str = "default"
    purge: bool = False
    pidfile: str | None = None
    heartbeat_interval: float | None = None

    @classmethod
    def resolve(
        cls,
        app: Celeriac,
        *,
        concurrency: int | str | None = None,
        pool: str | None = None,
        queues: str | tuple[str, ...] | None = None,
        hostname: str | None = None,
        prefetch_multiplier: int | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        without_heartbeat: bool = False,
        loglevel: str = "WARNING",
        logfile: str | None = None,
        exclude_queues: str | tuple[str, ...] | None = None,
        optimization: str = "default",
        purge: bool = False,
        pidfile: str | None = None,
        heartbeat_interval: float | None = None,
        autoscale: str | tuple[int, int] | None = None,
    ) -> WorkerOptions:
        """Fill unset options from the app's settings and the machine."""
        conf = app.conf
        pool = pool or conf.worker_pool
        if pool == "eventlet":
            raise ImproperlyConfigured(EVENTLET_REFUSED)
        if pool not in POOL_NAMES:
            raise ImproperlyConfigured(
                f"unknown pool {pool!r}: use prefork, threads, solo, asyncio or gevent"
            )
        if concurrency == "auto":
            concurrency = auto_concurrency(pool)
        elif isinstance(concurrency, str):
            raise ImproperlyConfigured(f"concurrency must be a number or auto, got {concurrency!r}")
        if concurrency is None:
            concurrency = conf.worker_concurrency or (os.cpu_count() or 1)
        if pool == "solo":
            concurrency = 1
        scaling, keepalive = _resolve_autoscale(autoscale, pool)
        if scaling is not None:
            # Celery compat: the pool starts with min children (at least one here).
            concurrency = max(1, scaling[1])
        if concurrency < 1:
            raise ImproperlyConfigured(f"concurrency must be at least 1, got {concurrency}")
        if isinstance(queues, str):
            queues = tuple(q.strip() for q in queues.split(",") if q.strip())
        listed = tuple(parse_queues(conf.task_queues))
        # Celery compat: without -Q, a worker consumes every queue of task_queues.
        queue_names = tuple(queues or ()) or listed or (conf.task_default_queue,)
        if exclude_queues:
            if isinstance(exclude_queues, str):
                exclude_queues = (exclude_queues,)
            excluded = {q.strip() for v in exclude_queues for q in v.split(",") if q.strip()}
            queue_names = tuple(q for q in queue_names if q not in excluded)
            if not queue_names:
                raise ImproperlyConfigured(
                    "-X/--exclude-queues excludes every queue this worker would consume: "
                    "name the ones to keep with -Q"
                )
        if listed and not conf.task_create_missing_queues:
            missing = [q for q in queue_names if q not in listed]
            if missing:
                raise ImproperlyConfigured(
                    f"queue(s) {', '.join(missing)} not in task_queues, and "
                    "task_create_missing_queues is False: add them to task_queues"
                )
        multiplier = prefetch_multiplier
        if multiplier is None:
            multiplier = conf.worker_prefetch_multiplier
        if multiplier < 1:
            multiplier = 1
        if optimization not in OPTIMIZATIONS:
            raise ImproperlyConfigured(f"unknown -O {optimization!r}: use default or fair")
        if optimization == "fair":
            if prefetch_multiplier is not None and prefetch_multiplier > 1:
                raise ImproperlyConfigured(
                    f"-O fair holds no message beyond the free slots, but "
                    f"--prefetch-multiplier {prefetch_multiplier} asks for more: drop one"
                )
            multiplier = 1
        if heartbeat_interval is not None and heartbeat_interval <= 0:
            raise ImproperlyConfigured(
                f"--heartbeat-interval must be above 0, got {heartbeat_interval}"
            )
        if time_limit is None:
            time_limit = conf.task_time_limit
        if soft_time_limit is None:
            soft_time_limit = conf.task_soft_time_limit
        if max_tasks_per_child is None:
            max_tasks_per_child = conf.worker_max_tasks_per_child
        if max_memory_per_child is None:
            max_memory_per_child = conf.worker_max_memory_per_child
        return cls(
            concurrency=concurrency,
            pool=pool,
            queues=queue_names,
            hostname=expand_hostname(hostname or "celeriac@%h"),
            prefetch_multiplier=multiplier,
            max_tasks_per_child=max_tasks_per_child,
            max_memory_per_child=max_memory_per_child,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            without_heartbeat=without_heartbeat,
            loglevel=loglevel,
            logfile=logfile,
            optimization=optimization,
            purge=purge,
            pidfile=pidfile,
            heartbeat_interval=heartbeat_interval,
            autoscale=scaling,
            autoscale_keepalive=keepalive,
        )


def _resolve_autoscale(
    autoscale: str | tuple[int, int] | None, pool: str
) -> tuple[tuple[int, int] | None, float]:
    """`--autoscale` as (max, min), and the keepalive (`AUTOSCALE_KEEPALIVE`)."""
    from celeriac.worker.pools.prefork.autoscale import (
        check_range,
        keepalive_from_env,
        parse_autoscale,
    )

    try:
        keepalive = keepalive_from_env()
        if autoscale is None:
            return None, keepalive
        if isinstance(autoscale, str):
            scaling = parse_autoscale(autoscale)
        else:
            scaling = (int(autoscale[0]), int(autoscale[1]))
            check_range(*scaling)
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from None
    if pool != "prefork":
        raise ImproperlyConfigured(
            f"--autoscale needs the prefork pool: the {pool} pool runs a fixed number of "
            "tasks at once (set --concurrency)"
        )
    return scaling, keepalive


def expand_hostname(template: str) -> str:
    """Celery's node name expansions: %h host, %n name part, %d domain, %i/%I pid."""
    host = socket.gethostname()
    name, _, domain = host.partition(".")
    pid = str(os.getpid())
    for key, value in (("%h", host), ("%n", name), ("%d", domain), ("%i", pid), ("%I", pid)):
        template = template.replace(key, value)
    if "@" not in template:
        template = f"{template}@{host}"
    return template


# Where cgroup v2 keeps the CPU quota of this process's group ("max 100000": none).
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def auto_concurrency(pool: str) -> int:
    """`-c auto` (Celery's): the CPUs this process may run on; for prefork, also at most
    the cgroup CPU quota, rounded up."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    if pool != "prefork":
        return max(1, cpus)
    try:
        with open(CGROUP_CPU_MAX, encoding="ascii") as handle:
            quota, _, period = handle.read().strip().partition(" ")
        if quota != "max" and int(period) > 0:
            cpus = min(cpus, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


# `--logfile` expansions (Celery's): %p node name, %n its name part, %h its host part,
# %d the host's domain, %i the process index, %I the index as `-N` (empty in the
# supervisor), %% a percent sign.
_LOGFILE_KEY = re.compile(r"%([pnhdiI%])")


def expand_logfile(template: str, hostname: str, index: int = 0) -> str:
    """The log file of process `index` (0: the supervisor, 1..N: prefork children)."""
    name, _, host = hostname.partition("@")
    if not host:
        name, host = "celeriac", name
    values = {
        "p": hostname,
        "n": name,
        "h": host,
        "d": host.partition(".")[2],
        "i": str(index),
        "I": f"-{index}" if index else "",
        "%": "%",
    }
    return _LOGFILE_KEY.sub(lambda match: values[match.group(1)], template)
