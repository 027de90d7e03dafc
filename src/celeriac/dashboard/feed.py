"""The events feed: a background thread folding the fleet's events into what the pages
show live.

It holds, in memory and bounded, a cache of recent tasks (`TaskRecord`, for the search,
which adds the backend's newest results, and the timeline; the task page reads the
result backend first, so it works by id after a restart), the workers' last heartbeat
events, per-queue arrival and departure counts and the charts' `Series`. A second
thread asks the workers for `stats` every `STATS_INTERVAL` (RSS, processes) and, unless
told not to, turns their task events on (`enable_events`, as Flower does).

`version` grows with every event: the live stream sends an update when it moved.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celeriac.dashboard.charts import Series
from celeriac.exceptions import CeleriacError, ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.app.events import EventReceiver

__all__ = ["STATS_INTERVAL", "EventFeed", "TaskRecord", "WorkerBeat", "matches"]

logger = logging.getLogger(__name__)

# Tasks the in-memory cache keeps (the oldest are forgotten first).
MAX_TASKS = 20_000
# Events a task's timeline keeps.
MAX_TIMELINE = 50
# Seconds between `stats` requests to the workers.
STATS_INTERVAL = 10.0
# Seconds the workers get to answer `stats`.
STATS_TIMEOUT = 1.0
# Seconds over which the queue rates are averaged.
RATE_WINDOW = 60.0

# Event type -> the state it puts a task in.
_STATES = {
    "task-sent": "PENDING",
    "task-received": "RECEIVED",
    "task-started": "STARTED",
    "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE",
    "task-retried": "RETRY",
    "task-revoked": "REVOKED",
    "task-rejected": "REJECTED",
}
_FIELDS = (
    "name",
    "args",
    "kwargs",
    "result",
    "exception",
    "traceback",
    "runtime",
    "retries",
    "root_id",
    "parent_id",
    "queue",
)


# States a later event of a non-final kind does not undo (events from the producer and
# from workers arrive out of order: a `task-sent` may come after `task-succeeded`).
_FINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED", "REJECTED"})


def _next_state(current: str, new: str) -> str:
    if new == "PENDING" and current != "PENDING":
        return current
    if current in _FINAL and new not in _FINAL:
        return current
    return new


@dataclass(slots=True)
class TaskRecord:
    """One task as its events told it (a cache: the backend is the source of truth)."""

    uuid: str
    state: str = "PENDING"
    name: str | None = None
    hostname: str | None = None
    args: str | None = None
    kwargs: str | None = None
    result: str | None = None
    exception: str | None = None
    traceback: str | None = None
    runtime: float | None = None
    retries: int | None = None
    root_id: str | None = None
    parent_id: str | None = None
    queue: str | None = None
    first_seen: float = 0.0
    updated: float = 0.0
    timeline: list[tuple[str, float, str]] = field(default_factory=list)


@dataclass(slots=True)
class WorkerBeat:
    """A worker's last heartbeat event."""

    hostname: str
    timestamp: float = 0.0
    freq: float = 2.0
    active: int | None = None
    processed: int | None = None
    loadavg: list[float] | None = None
    offline: bool = False


def matches(
    task: TaskRecord,
    *,
    name: str = "",
    state: str = "",
    since: float | None = None,
    until: float | None = None,
) -> bool:
    """Whether `task` passes the search: name (substring), state and time."""
    if name and name not in (task.name or ""):
        return False
    if state and task.state != state:
        return False
    if since is not None and task.updated < since:
        return False
    return until is None or task.first_seen <= until


class _Rates:
    """Events per queue over the last `RATE_WINDOW` seconds, in one-second slots."""

    def __init__(self) -> None:
        self._slots: dict[str, dict[int, int]] = {}

    def add(self, queue: str, timestamp: float) -> None:
        slots = self._slots.setdefault(queue, {})
        second = int(timestamp)
        slots[second] = slots.get(second, 0) + 1
        if len(slots) > RATE_WINDOW * 2:
            cutoff = second - int(RATE_WINDOW)
            for old in [s for s in slots if s < cutoff]:
                del slots[old]

    def per_second(self, queue: str, now: float) -> float:
        cutoff = int(now) - int(RATE_WINDOW)
        slots = self._slots.get(queue, {})
        return sum(n for s, n in list(slots.items()) if s >= cutoff) / RATE_WINDOW

    def queues(self) -> list[str]:
        return list(self._slots)


class EventFeed:
    """Reads the events stream in a thread; the pages read what it gathered.

    Args:
        app: The app whose broker carries the events.
        enable_events: Ask the workers to send task events (`enable_events`).
    """

    def __init__(self, app: Celeriac, *, enable_events: bool = True) -> None:
        self.app = app
        self.enable_events = enable_events
        self.series = Series()
        self.version = 0
        self.events_seen = 0
        #: `timestamp` of the newest event folded in (the live stream's latency mark).
        self.latest = 0.0
        self.error: str | None = None
        self.stats: dict[str, dict[str, Any]] = {}
        self.stats_at = 0.0
        self._tasks: OrderedDict[str, TaskRecord] = OrderedDict()
        self._workers: dict[str, WorkerBeat] = {}
        self._arrived = _Rates()
        self._departed = _Rates()
        self._queues: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._receiver: EventReceiver | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        for target, name in ((self._read, "events"), (self._poll, "stats")):
            thread = threading.Thread(target=target, name=f"celeriac-dashboard-{name}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self._receiver = receiver = self.app.events.Receiver(handlers={})
                for event in receiver.itercapture():
                    self.fold(event)
                    if self._stop.is_set():
                        return
                return
            except ImproperlyConfigured as exc:
                # This broker carries no events: say so once, on every page.
                self.error = f"no live events: {exc}"
                logger.warning("Dashboard shows no live events: %s", exc)
                return
            except CeleriacError as exc:
                self.error = f"events: {exc}"
                logger.warning("Dashboard cannot read events: %s", exc)
            except Exception as exc:  # isolation boundary: keep the feed alive
                self.error = f"events: {type(exc).__name__}: {exc}"
                logger.exception("Dashboard events feed failed; retrying")
            self._stop.wait(2.0)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                if self.enable_events:
                    self.app.control.enable_events()
                replies = self.app.control.inspect(timeout=STATS_TIMEOUT).stats() or {}
                self.stats = {k: v for k, v in replies.items() if isinstance(v, dict)}
                self.stats_at = time.time()
            except Exception as exc:  # isolation boundary: a failed poll is retried
                logger.debug("Dashboard stats poll failed: %s", exc)
            self._stop.wait(STATS_INTERVAL)

    # -- folding --------------------------------------------------------------------

    def fold(self, event: dict[str, Any]) -> None:
        """Fold one event in (the reader thread calls this; tests and the load script
        may too)."""
        kind = str(event.get("type", ""))
        stamp = event.get("timestamp")
        timestamp = float(stamp) if isinstance(stamp, int | float) else time.time()
        hostname = str(event.get("hostname") or "")
        with self._lock:
            self.events_seen += 1
            self.version += 1
            self.latest = max(self.latest, timestamp)
            if kind.startswith("worker-"):
                self._fold_worker(kind, hostname, timestamp, event)
            elif kind.startswith("task-") and event.get("uuid"):
                self._fold_task(kind, hostname, timestamp, event)

    def _fold_worker(
        self, kind: str, hostname: str, timestamp: float, event: dict[str, Any]
    ) -> None:
        beat = self._workers.setdefault(hostname, WorkerBeat(hostname))
        beat.offline = kind == "worker-offline"
        beat.timestamp = timestamp
        beat.freq = float(event.get("freq") or beat.freq)
        for name in ("active", "processed", "loadavg"):
            if name in event:
                setattr(beat, name, event[name])

    def _fold_task(self, kind: str, hostname: str, timestamp: float, event: dict[str, Any]) -> None:
        uuid = str(event["uuid"])
        task = self._tasks.get(uuid)
        if task is None:
            task = self._tasks[uuid] = TaskRecord(uuid, first_seen=timestamp)
            if len(self._tasks) > MAX_TASKS:
                self._tasks.popitem(last=False)
        else:
            self._tasks.move_to_end(uuid)
        task.state = _next_state(task.state, _STATES.get(kind, task.state))
        task.updated = max(task.updated, timestamp)
        if kind != "task-sent":
            task.hostname = hostname
        for name in _FIELDS:
            value = event.get(name)
            if value is not None:
                setattr(task, name, value)
        if len(task.timeline) < MAX_TIMELINE:
            task.timeline.append((kind, timestamp, hostname))
        if task.queue:
            self._queues.add(task.queue)
        if kind == "task-sent":
            self.series.add_sent(timestamp)
            if task.queue:
                self._arrived.add(task.queue, timestamp)
        elif kind == "task-received" and task.queue:
            self._departed.add(task.queue, timestamp)
        elif kind in ("task-succeeded", "task-failed"):
            runtime = event.get("runtime")
            self.series.add_finished(
                timestamp,
                failed=kind == "task-failed",
                runtime=float(runtime) if isinstance(runtime, int | float) else None,
            )

    # -- reading --------------------------------------------------------------------

    def task(self, uuid: str) -> TaskRecord | None:
        with self._lock:
            return self._tasks.get(uuid)

    def children_of(self, uuid: str) -> list[TaskRecord]:
        """Cached tasks whose parent is `uuid`."""
        with self._lock:
            return [t for t in self._tasks.values() if t.parent_id == uuid]

    def search(
        self,
        *,
        name: str = "",
        state: str = "",
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[TaskRecord]:
        """Cached tasks, newest first, filtered by name (substring), state and time."""
        found: list[TaskRecord] = []
        with self._lock:
            for task in reversed(self._tasks.values()):
                if not matches(task, name=name, state=state, since=since, until=until):
                    continue
                found.append(task)
                if len(found) >= limit:
                    break
        return found

    def workers(self) -> dict[str, WorkerBeat]:
        with self._lock:
            return dict(self._workers)

    def rates(self, queue: str, now: float) -> tuple[float, float]:
        """(arrivals, departures) per second over the last minute."""
        with self._lock:
            return self._arrived.per_second(queue, now), self._departed.per_second(queue, now)

    def queues_seen(self) -> list[str]:
        with self._lock:
            return sorted(self._queues)

    def sent_at(self, uuid: str) -> float | None:
        """When the task was first seen in an event (its `task-sent`, if producers send it)."""
        with self._lock:
            task = self._tasks.get(uuid)
            return task.first_seen if task is not None else None
