"""Remote control changes reaching the processes that run tasks.

`apply_control` makes a change (rate limit, time limits, task events, consumed queues)
in one consuming process. A prefork supervisor passes each change to its children as a
JSON line on a pipe per child; `ControlPipe` is a child's end, read by its keeper
thread. Children forked later inherit the change from the supervisor, which made it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.worker.consumer import Consumer
    from celeriac.worker.events import EventDispatcher
    from celeriac.worker.execute import Executor

logger = logging.getLogger("celeriac.worker")

__all__ = ["CONTROL_PIPE_INTERVAL", "ControlPipe", "apply_control"]


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
    if method == "revoke":
        if executor is not None:
            executor.revocations.add([str(i) for i in arguments.get("task_ids") or ()])
    elif method == "rate_limit":
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
    elif method == "heartbeat":
        if events is not None:
            events.heartbeat_now()
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
        # Read by the keeper thread and by the consumer before each batch.
        self._lock = threading.Lock()

    def read(self) -> None:
        with self._lock:
            self._read()

    def _read(self) -> None:
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
