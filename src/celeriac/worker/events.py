"""Worker and task events in Celery's format (spec §5.5), for Flower and `celery events`.

`EventDispatcher` publishes to the broker's event exchange (`celeryev`): the worker's
`worker-online`, a `worker-heartbeat` every `freq` seconds and `worker-offline` (always,
as Celery does), and, while task events are on (`-E`, `worker_send_task_events`, the
`enable_events` command), `task-received`, `task-started`, `task-succeeded`,
`task-failed`, `task-retried`, `task-revoked` and `task-rejected`.

Task events hang on the worker's signals: their receivers are connected only while task
events are on, so with events off the task path pays nothing (a signal with no
receivers is not even sent). With them on, the task path serializes each event at once
(orjson, behind the fields every event of the process shares, serialized once a
minute) and appends the bytes to a bounded buffer: bytes are not tracked by the garbage
collector, so thousands of waiting events do not make its collections longer or more
frequent. A flusher thread joins what gathered into one JSON list and publishes it under
the routing key `task.multi` (as Celery's workers do) every `FLUSH_INTERVAL`, so a burst
of tasks costs one publish per flush, not three round trips per task. A failed publish is logged
at debug level and dropped, as is the oldest of more than `MAX_BUFFERED` waiting:
events are fire-and-forget, as in Celery.

The heartbeat has no timer of its own: `tick` is called by a consuming process's presence
thread after each presence tick (`holdings.py`, every `HEARTBEAT_INTERVAL`) and sends one
every `freq / HEARTBEAT_INTERVAL` ticks, so a worker that stops keeping its presence
records fresh (stopped, stalled, cut off) also stops heartbeating. In a prefork worker the
first child's presence thread sends the worker's heartbeats, with the supervisor's pid
and counts read from the shared slot table.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import platform
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson

from celeriac import signals
from celeriac._version import __version__
from celeriac.app.events import utcoffset
from celeriac.brokers.mailbox import pack
from celeriac.protocol.message import Message
from celeriac.worker.presence import HEARTBEAT_INTERVAL

if TYPE_CHECKING:
    from collections.abc import Callable

    from celeriac.brokers.mailbox import Mailbox

__all__ = ["HEARTBEAT_FREQ", "EventDispatcher"]

logger = logging.getLogger("celeriac.worker")

# Celery's worker heartbeat interval (`freq`), seconds.
HEARTBEAT_FREQ = 2.0
# Celery truncates `result` reprs in task-succeeded to this length.
RESULT_REPR_MAX = 1024
# How often buffered task events are published, the most in one message, and the most
# waiting (the oldest go first when the broker is away that long).
FLUSH_INTERVAL = 0.1
MAX_BATCH = 1000
MAX_BUFFERED = 100_000


class EventDispatcher:
    """Sends one worker's events.

    Args:
        hostname: The node name events are sent as.
        mailbox: The broker's broadcast channel.
        task_events: Send task events from the start.
        counts: Returns (active, processed) for heartbeats.
        clock: Returns the next Lamport clock value.
        freq: Seconds between heartbeats (Celery's `freq` field).
        pid: The pid events name (default: this process's).
    """

    def __init__(
        self,
        hostname: str,
        mailbox: Mailbox,
        *,
        task_events: bool = False,
        counts: Callable[[], tuple[int, int]] | None = None,
        clock: Callable[[], int] | None = None,
        freq: float = HEARTBEAT_FREQ,
        pid: int | None = None,
    ) -> None:
        self.hostname = hostname
        self.mailbox = mailbox
        self.freq = freq
        self.counts = counts or (lambda: (0, 0))
        # A process of its own (a prefork child) counts its own clock.
        self._clock = clock or itertools.count(1).__next__
        self._started_at: dict[str, float] = {}
        self._task_events = False
        self._online = False
        # Presence ticks per heartbeat, ticks since the last one, and a heartbeat asked for.
        self._ticks_per_beat = max(1, round(freq / HEARTBEAT_INTERVAL))
        self._ticks = 0
        self._beat_now = False
        self._offset = 0
        self._fixed_pid = pid
        self._pid = 0
        self._offset_until = float("-inf")
        # `{"hostname":...,"utcoffset":...,"pid":...,` opening every buffered task event.
        self._opening = b""
        # Serialized task events: appended by the task path, taken by the flusher (deque
        # ends are thread-safe).
        self._pending: collections.deque[bytes] = collections.deque(maxlen=MAX_BUFFERED)
        # One flush at a time (the flusher thread's, or a last one at stop).
        self._flush_lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._flusher_stop = threading.Event()
        self.task_events = task_events

    # -- sending ------------------------------------------------------------------------

    def _shared(self) -> dict[str, Any]:
        """The fields every event of this process carries."""
        now = time.monotonic()
        if now >= self._offset_until:
            # Read at most once a minute: it changes only with daylight saving time.
            self._offset = utcoffset()
            self._pid = self._fixed_pid or os.getpid()
            self._offset_until = now + 60.0
            shared = {"hostname": self.hostname, "utcoffset": self._offset, "pid": self._pid}
            self._opening = orjson.dumps(shared)[:-1] + b","
        return {"hostname": self.hostname, "utcoffset": self._offset, "pid": self._pid}

    def _event(self, type: str, fields: dict[str, Any]) -> dict[str, Any]:
        return {
            **self._shared(),
            "clock": self._clock(),
            **fields,
            "timestamp": time.time(),
            "type": type,
        }

    def send_task_event(self, type: str, **fields: Any) -> None:
        """Buffer one task event; the flusher thread publishes it shortly."""
        fields.update(clock=self._clock(), timestamp=time.time(), type=type)
        self._buffer(fields)

    def _buffer(self, event: dict[str, Any]) -> None:
        """Serialize `event` (without the shared fields) behind the shared fields."""
        try:
            data = orjson.dumps(event)
        except TypeError:  # an integer beyond 64 bits, an object orjson does not know
            data = json.dumps(event, default=repr).encode()
        self._pending.append(self._opening + data[1:])

    def flush(self) -> None:
        """Publish the buffered task events now, as `task.multi` lists."""
        with self._flush_lock:
            self._flush()

    def _flush(self) -> None:
        pending = self._pending
        self._shared()  # the shared fields, read again once a minute
        while pending:
            take = pending.popleft
            batch = [take() for _ in range(min(len(pending), MAX_BATCH))]
            message = Message(
                headers={"hostname": self.hostname},
                body=b"[" + b",".join(batch) + b"]",
                content_type="application/json",
                content_encoding="utf-8",
            )
            try:
                self.mailbox.publish_event("task.multi", message)
            except Exception as exc:  # isolation boundary: events are fire-and-forget
                logger.debug("Could not send %d task event(s): %s", len(batch), exc)

    def _flush_loop(self) -> None:
        while not self._flusher_stop.wait(FLUSH_INTERVAL):
            self.flush()
        self.flush()

    def send(self, type: str, **fields: Any) -> None:
        """Publish one event now (dropped, with a debug line, if the broker is away)."""
        event = self._event(type, fields)
        message = pack(event, headers={"hostname": self.hostname})
        try:
            self.mailbox.publish_event(type.replace("-", "."), message)
        except Exception as exc:  # isolation boundary: events are fire-and-forget
            logger.debug("Could not send event %s: %s", type, exc)

    def worker_fields(self) -> dict[str, Any]:
        active, processed = self.counts()
        try:
            loadavg = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            loadavg = [0.0, 0.0, 0.0]
        return {
            "freq": self.freq,
            "active": active,
            "processed": processed,
            "loadavg": loadavg,
            "sw_ident": "celeriac",
            "sw_ver": __version__,
            "sw_sys": platform.system(),
        }

    # -- worker events ------------------------------------------------------------------

    def start(self) -> None:
        """Send worker-online (`stop` then sends worker-offline)."""
        self._online = True
        self.send("worker-online", **self.worker_fields())

    def tick(self) -> None:
        """One presence tick went by: send a heartbeat every `freq` seconds' worth."""
        self._ticks += 1
        if self._ticks >= self._ticks_per_beat or self._beat_now:
            self._ticks = 0
            self._beat_now = False
            self.send("worker-heartbeat", **self.worker_fields())

    def heartbeat_now(self) -> None:
        """Send a heartbeat at the next presence tick (the `heartbeat` command: a monitor
        just started)."""
        self._beat_now = True

    def stop(self) -> None:
        """Stop sending task events; send worker-offline if worker-online went out."""
        self.task_events = False
        if self._online:
            self._online = False
            self.send("worker-offline", **self.worker_fields())

    # -- task events --------------------------------------------------------------------

    @property
    def task_events(self) -> bool:
        return self._task_events

    @task_events.setter
    def task_events(self, on: bool) -> None:
        if on == self._task_events:
            return
        self._task_events = on
        hooks: list[tuple[Any, Callable[..., None]]] = [
            (signals.task_received, self._on_received),
            (signals.task_prerun, self._on_prerun),
            (signals.task_postrun, self._on_postrun),
            (signals.task_failure, self._on_failure),
            (signals.task_retry, self._on_retry),
            (signals.task_revoked, self._on_revoked),
            (signals.task_rejected, self._on_rejected),
        ]
        for signal, receiver in hooks:
            if on:
                # Held strongly (this dispatcher holds them back): no weak reference to
                # resolve on every send.
                signal.connect(receiver, weak=False)
            else:
                signal.disconnect(receiver)
        if on:
            self._shared()
            self._flusher_stop = threading.Event()
            self._flusher = threading.Thread(
                target=self._flush_loop, name="celeriac-events", daemon=True
            )
            self._flusher.start()
        elif self._flusher is not None:
            self._flusher_stop.set()
            if self._flusher is not threading.current_thread():
                self._flusher.join(timeout=5)
            self._flusher = None

    def _on_received(self, sender: Any = None, request: Any = None, **kwargs: Any) -> None:
        call = request.call
        headers = request.delivery.message.headers
        self._buffer(
            {
                "clock": self._clock(),
                "uuid": call.id,
                "name": call.name,
                "args": headers.get("argsrepr") or repr(call.args),
                "kwargs": headers.get("kwargsrepr") or repr(call.kwargs),
                "root_id": headers.get("root_id"),
                "parent_id": headers.get("parent_id"),
                "retries": headers.get("retries") or 0,
                "eta": headers.get("eta"),
                "expires": headers.get("expires"),
                "timestamp": time.time(),
                "type": "task-received",
            }
        )

    def _on_prerun(self, sender: Any = None, task_id: str = "", **kwargs: Any) -> None:
        self._started_at[task_id] = time.monotonic()
        self._buffer(
            {
                "clock": self._clock(),
                "uuid": task_id,
                "timestamp": time.time(),
                "type": "task-started",
            }
        )

    def _on_postrun(
        self, sender: Any = None, task_id: str = "", retval: Any = None, state: str = "", **kw: Any
    ) -> None:
        started = self._started_at.pop(task_id, None)
        if state != "SUCCESS":
            return
        runtime = time.monotonic() - started if started is not None else 0.0
        self._buffer(
            {
                "clock": self._clock(),
                "uuid": task_id,
                "result": "None" if retval is None else repr(retval)[:RESULT_REPR_MAX],
                "runtime": runtime,
                "timestamp": time.time(),
                "type": "task-succeeded",
            }
        )

    def _on_failure(
        self,
        sender: Any = None,
        task_id: str = "",
        exception: Any = None,
        traceback: Any = None,
        **kwargs: Any,
    ) -> None:
        self.send_task_event(
            "task-failed", uuid=task_id, exception=repr(exception), traceback=str(traceback)
        )

    def _on_retry(
        self,
        sender: Any = None,
        request: Any = None,
        reason: Any = None,
        einfo: Any = None,
        **kw: Any,
    ) -> None:
        task_id = getattr(request, "id", None)
        self.send_task_event(
            "task-retried", uuid=task_id, exception=repr(reason), traceback=str(einfo)
        )

    def _on_revoked(
        self,
        sender: Any = None,
        request: Any = None,
        terminated: bool = False,
        signum: Any = None,
        expired: bool = False,
        **kwargs: Any,
    ) -> None:
        self.send_task_event(
            "task-revoked",
            uuid=getattr(request, "id", None),
            terminated=terminated,
            signum=signum,
            expired=expired,
        )

    def _on_rejected(self, sender: Any = None, message: Any = None, **kwargs: Any) -> None:
        task_id = getattr(message, "task_id", None)
        self.send_task_event("task-rejected", uuid=task_id, requeue=False)
