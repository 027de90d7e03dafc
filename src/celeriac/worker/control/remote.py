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

__all__ = ["Remote", "event_mailbox", "start_remote", "task_event_dispatcher"]


def event_mailbox(app: Celeriac) -> Mailbox | None:
    """A broadcast channel for this process, or None on brokers without one."""
    from celeriac.app.control import open_app_mailbox

    return open_app_mailbox(app)


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
        **({"freq": options.heartbeat_interval} if options.heartbeat_interval else {}),
    )
    server = ControlServer(app, options, pool, mailbox, events=events, clock=clock)
    server.start()
    if not options.without_heartbeat:
        events.start()
    else:
        events.send("worker-online", **events.worker_fields())
    return Remote(server, events)
