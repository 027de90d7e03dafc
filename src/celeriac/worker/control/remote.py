"""Starting a worker's remote control and events: `start_remote`, and the channels a
process that runs tasks sends its task events on."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celeriac.worker.control.server import ControlServer, LamportClock

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.brokers.mailbox import Mailbox
    from celeriac.worker.events import EventDispatcher
    from celeriac.worker.options import WorkerOptions

logger = logging.getLogger("celeriac.worker")

__all__ = [
    "Remote",
    "event_mailbox",
    "heartbeat_freq",
    "sends_heartbeats",
    "start_remote",
    "task_event_dispatcher",
]


def event_mailbox(app: Celeriac) -> Mailbox | None:
    """A broadcast channel for this process, or None on brokers without one."""
    from celeriac.app.control import open_app_mailbox

    return open_app_mailbox(app)


def task_event_dispatcher(
    app: Celeriac, hostname: str, *, pid: int | None = None, freq: float | None = None
) -> EventDispatcher | None:
    """The task event sender of a process that runs tasks (off until enabled); `pid` is
    the pid its events name (a prefork child's heartbeats name the supervisor's), `freq`
    its heartbeat interval if it sends them."""
    from celeriac.worker.events import HEARTBEAT_FREQ, EventDispatcher

    mailbox = event_mailbox(app)
    if mailbox is None:
        return None
    return EventDispatcher(
        hostname,
        mailbox,
        task_events=bool(app.conf.worker_send_task_events),
        pid=pid,
        freq=freq or HEARTBEAT_FREQ,
    )


def heartbeat_freq(options: WorkerOptions) -> float:
    """Seconds between the worker's heartbeats (`--heartbeat-interval`, else Celery's 2)."""
    from celeriac.worker.events import HEARTBEAT_FREQ

    return options.heartbeat_interval or HEARTBEAT_FREQ


def sends_heartbeats(app: Celeriac, options: WorkerOptions) -> bool:
    """The worker sends worker-heartbeat events (remote control on, no
    `--without-heartbeat`)."""
    return bool(app.conf.get("worker_enable_remote_control", True)) and not (
        options.without_heartbeat
    )


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
        freq=heartbeat_freq(options),
    )
    server = ControlServer(app, options, pool, mailbox, events=events, clock=clock)
    server.start()
    events.start()
    if in_process and not options.without_heartbeat:
        # Heartbeats ride on the consumer's presence tick (a prefork child's: child.py).
        pool.presence_jobs.append(events.tick)
    return Remote(server, events)
