"""Worker options: what `celeriac worker` was asked to do, with defaults from settings."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

from celeriac.app.queues import parse_queues
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac

__all__ = ["EVENTLET_REFUSED", "POOL_NAMES", "WorkerOptions"]

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
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def resolve(
        cls,
        app: Celeriac,
        *,
        concurrency: int | None = None,
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
        if concurrency is None:
            concurrency = conf.worker_concurrency or (os.cpu_count() or 1)
        if pool == "solo":
            concurrency = 1
        if concurrency < 1:
            raise ImproperlyConfigured(f"concurrency must be at least 1, got {concurrency}")
        if isinstance(queues, str):
            queues = tuple(q.strip() for q in queues.split(",") if q.strip())
        listed = tuple(parse_queues(conf.task_queues))
        # Celery compat: without -Q, a worker consumes every queue of task_queues.
        queue_names = tuple(queues or ()) or listed or (conf.task_default_queue,)
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
        )


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
