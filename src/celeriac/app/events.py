"""`app.events`: read the events workers send (Celery's `Receiver` and `State`).

`app.events.Receiver(handlers={"task-succeeded": fn, "*": every})` listens on the
broker's event exchange (`celeryev`) and calls a handler per event, by type, with the
event dict (plus `local_received`); `capture(limit=, timeout=)` runs it. Celery's
`task.multi` lists are taken apart. `app.events.State()` folds events into the workers
and tasks a monitor shows (`state.event(event)`; `workers`, `tasks`,
`alive_workers()`), as `celery.events.state.State` does for the common fields.

`send_task_sent` is the producer's `task-sent` event (`task_send_sent_event`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from celeriac.app.base import Celeriac
    from celeriac.protocol.message import Message

__all__ = [
    "EventReceiver",
    "Events",
    "State",
    "TaskState",
    "WorkerState",
    "send_task_sent",
    "utcoffset",
]

# A worker is alive while its last heartbeat is younger than freq x this (Celery's 200 %).
HEARTBEAT_EXPIRE_WINDOW = 2.0
# One wait for events blocks at most this long (how fast `should_stop` is noticed).
RECEIVE_STEP = 0.5


def utcoffset() -> int:
    """Celery's `utcoffset`: hours west of UTC (the sign is the opposite of ISO's)."""
    if time.daylight and time.localtime().tm_isdst:
        return time.altzone // 3600
    return time.timezone // 3600


_sent_lock = threading.Lock()
_sent_clock = [0]


def send_task_sent(
    app: Celeriac, message: Message, *, queue: str, exchange: str | None, routing_key: str | None
) -> None:
    """Publish `task-sent` for a message just sent (dropped quietly if it cannot go)."""
    from celeriac.brokers.mailbox import pack, supports_mailbox

    if not supports_mailbox(app.broker_url):
        return
    headers = message.headers
    with _sent_lock:
        _sent_clock[0] += 1
        clock = _sent_clock[0]
    hostname = f"gen{os.getpid()}@{socket.gethostname()}"
    event = {
        "hostname": hostname,
        "utcoffset": utcoffset(),
        "pid": os.getpid(),
        "clock": clock,
        "uuid": headers.get("id"),
        "name": headers.get("task"),
        "args": headers.get("argsrepr"),
        "kwargs": headers.get("kwargsrepr"),
        "retries": headers.get("retries") or 0,
        "eta": headers.get("eta"),
        "expires": headers.get("expires"),
        "queue": queue,
        "exchange": exchange or "",
        "routing_key": routing_key or queue,
        "root_id": headers.get("root_id"),
        "parent_id": headers.get("parent_id"),
        "timestamp": time.time(),
        "type": "task-sent",
    }
    try:
        app.control.mailbox().publish_event(
            "task.sent", pack(event, headers={"hostname": hostname})
        )
    except Exception:  # isolation boundary: an event never fails a send
        import logging

        logging.getLogger(__name__).debug("Could not send task-sent", exc_info=True)


class EventReceiver:
    """Calls handlers for the events workers send (Celery's `app.events.Receiver`).

    Args:
        app: The app (broker URL, exchanges, accepted content).
        handlers: Event type -> function of the event dict; `"*"` gets every event.
        routing_key: Which events (`#` all, `task.#`, `worker.#`).
    """

    def __init__(
        self,
        app: Celeriac,
        handlers: dict[str, Callable[[dict[str, Any]], Any]] | None = None,
        routing_key: str = "#",
    ) -> None:
        self.app = app
        self.handlers = dict(handlers or {})
        self.routing_key = routing_key
        self.should_stop = False
        #: Set once the receiver listens: events sent from then on reach it.
        self.ready = threading.Event()

    def itercapture(
        self, limit: int | None = None, timeout: float | None = None, wakeup: bool = True
    ) -> Iterator[dict[str, Any]]:
        """Yield events as they come, until `limit` events or `timeout` seconds."""
        from celeriac.app.control import open_app_mailbox
        from celeriac.brokers.mailbox import unpack
        from celeriac.protocol.serializers import normalize_accept

        mailbox = open_app_mailbox(self.app)
        if mailbox is None:
            from celeriac.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured("events need a Redis or RabbitMQ broker")
        accept = normalize_accept(self.app.conf.accept_content)
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        try:
            mailbox.listen_events(self.routing_key)
            self.ready.set()
            if wakeup:
                # Celery's receivers wake workers so they announce themselves at once.
                self.app.control.broadcast("heartbeat")
            while not self.should_stop:
                step = RECEIVE_STEP
                if deadline is not None:
                    step = min(step, deadline - time.monotonic())
                    if step <= 0:
                        return
                for message in mailbox.receive_events(timeout=step):
                    try:
                        payload = unpack(message, accept=accept)
                    except Exception:  # isolation boundary: skip what cannot be read
                        continue
                    for event in payload if isinstance(payload, list) else [payload]:
                        if not isinstance(event, dict):
                            continue
                        event["local_received"] = time.time()
                        yield event
                        seen += 1
                        if limit is not None and seen >= limit:
                            return
        finally:
            mailbox.close()

    def capture(
        self, limit: int | None = None, timeout: float | None = None, wakeup: bool = True
    ) -> None:
        """Run the handlers on events until `limit` events, `timeout` or `should_stop`."""
        for event in self.itercapture(limit=limit, timeout=timeout, wakeup=wakeup):
            self.process(event)

    def process(self, event: dict[str, Any]) -> None:
        handler = self.handlers.get(str(event.get("type"))) or self.handlers.get("*")
        if handler is not None:
            handler(event)


@dataclass
class WorkerState:
    """One worker as events describe it."""

    hostname: str
    pid: int | None = None
    freq: float = 2.0
    last_heartbeat: float | None = None
    active: int | None = None
    processed: int | None = None
    loadavg: list[float] | None = None
    sw_ident: str | None = None
    sw_ver: str | None = None
    sw_sys: str | None = None
    offline: bool = False

    @property
    def alive(self) -> bool:
        if self.offline or self.last_heartbeat is None:
            return False
        return time.time() < self.last_heartbeat + self.freq * HEARTBEAT_EXPIRE_WINDOW


@dataclass
class TaskState:
    """One task as events describe it."""

    uuid: str
    name: str | None = None
    state: str = "PENDING"
    hostname: str | None = None
    args: str | None = None
    kwargs: str | None = None
    result: str | None = None
    exception: str | None = None
    traceback: str | None = None
    runtime: float | None = None
    retries: int | None = None
    sent: float | None = None
    received: float | None = None
    started: float | None = None
    succeeded: float | None = None
    failed: float | None = None
    revoked: float | None = None
    events: list[str] = field(default_factory=list)


# Event type -> (state, timestamp attribute)
_TASK_STATES = {
    "task-sent": ("PENDING", "sent"),
    "task-received": ("RECEIVED", "received"),
    "task-started": ("STARTED", "started"),
    "task-succeeded": ("SUCCESS", "succeeded"),
    "task-failed": ("FAILURE", "failed"),
    "task-retried": ("RETRY", None),
    "task-revoked": ("REVOKED", "revoked"),
    "task-rejected": ("REJECTED", None),
}
_TASK_FIELDS = ("name", "args", "kwargs", "result", "exception", "traceback", "runtime", "retries")


class State:
    """Workers and tasks, kept up to date by `event(...)` (Celery's `State`)."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerState] = {}
        self.tasks: dict[str, TaskState] = {}
        self.event_count = 0
        self.task_count = 0

    def event(self, event: dict[str, Any]) -> None:
        self.event_count += 1
        kind = str(event.get("type", ""))
        hostname = str(event.get("hostname", ""))
        if kind.startswith("worker-"):
            worker = self.workers.setdefault(hostname, WorkerState(hostname))
            worker.pid = event.get("pid", worker.pid)
            worker.freq = float(event.get("freq") or worker.freq)
            for name in ("active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys"):
                if name in event:
                    setattr(worker, name, event[name])
            worker.offline = kind == "worker-offline"
            if not worker.offline:
                worker.last_heartbeat = float(event.get("timestamp") or time.time())
            return
        if not kind.startswith("task-") or not event.get("uuid"):
            return
        uuid = str(event["uuid"])
        task = self.tasks.get(uuid)
        if task is None:
            task = self.tasks[uuid] = TaskState(uuid)
            self.task_count += 1
        state, stamp = _TASK_STATES.get(kind, (task.state, None))
        task.state = state
        task.events.append(kind)
        if kind != "task-sent":
            task.hostname = hostname
        if stamp is not None:
            setattr(task, stamp, event.get("timestamp"))
        for name in _TASK_FIELDS:
            if name in event:
                setattr(task, name, event[name])

    def alive_workers(self) -> list[WorkerState]:
        return [worker for worker in self.workers.values() if worker.alive]

    def tasks_by_type(self, name: str) -> list[TaskState]:
        return [task for task in self.tasks.values() if task.name == name]


class Events:
    """`app.events`."""

    def __init__(self, app: Celeriac) -> None:
        self.app = app

    def Receiver(
        self,
        connection: Any = None,
        handlers: dict[str, Callable[[dict[str, Any]], Any]] | None = None,
        routing_key: str = "#",
        **kwargs: Any,
    ) -> EventReceiver:
        if connection is not None or kwargs:
            unknown = ", ".join(["connection", *kwargs] if connection is not None else kwargs)
            raise TypeError(f"Receiver: celeriac does not support {unknown}")
        return EventReceiver(self.app, handlers, routing_key)

    def State(self) -> State:
        return State()
