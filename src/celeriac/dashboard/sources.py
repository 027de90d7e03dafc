"""What the pages show, read from the broker, the result backend and the events feed.

Every read goes to the broker or the backend when a page asks (presence records, queue
depths, dead letters, stored results); the feed adds what only events tell (heartbeat
load, rates, the timeline, the charts). Nothing here writes but the actions at the
bottom, which the `actions` page calls on a checked POST.

Secrets never leave: URLs go through `redact_url`, and argument texts are cut to
`ARGS_SHOWN` characters (the templates escape them).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celeriac._urls import redact_url
from celeriac.dashboard.feed import TaskRecord, matches
from celeriac.exceptions import BrokerError, CeleriacError

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.backends.base import ResultMeta
    from celeriac.brokers.base import DeadLetter
    from celeriac.dashboard.feed import EventFeed

__all__ = ["ARGS_SHOWN", "QueueRow", "Sources", "TaskView", "WorkerRow", "truncate"]

# Characters of args, kwargs, results and reasons shown before "...".
ARGS_SHOWN = 200
# Dead letters one page lists.
DEAD_LETTERS_SHOWN = 200
# Nodes one workflow graph draws at most.
GRAPH_NODES = 60
# Newest stored results the task search reads besides the events cache.
SEARCH_STORED = 2_000
# Seconds one read of them serves (the live part is fetched again up to twice a second;
# on Redis with 10,000 results a read takes about 0.15 s).
SEARCH_STORED_FOR = 5.0


def truncate(value: Any, limit: int = ARGS_SHOWN) -> str:
    """`value` as text of at most `limit` characters (escaping is the template's job)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One worker: its presence records, heartbeat event and `stats` reply merged."""

    name: str
    state: str
    pool: str = ""
    concurrency: int = 0
    consumers: int = 0
    held: int = 0
    running: int = 0
    heartbeat_age: float | None = None
    loadavg: str = ""
    rss_kib: int | None = None
    processed: int | None = None
    active: int | None = None


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One queue's depth by kind and its rates."""

    name: str
    ready: int
    delayed: int | None
    held: int | None
    rate_in: float
    rate_out: float
    oldest_age: float | None
    oldest_id: str | None
    error: str = ""


@dataclass(slots=True)
class GraphNode:
    """One task of a workflow graph."""

    id: str
    name: str
    state: str
    parent: str | None = None
    group: str | None = None
    depth: int = 0
    column: int = 0


@dataclass(slots=True)
class TaskView:
    """One task as the backend stores it, plus what the events told."""

    id: str
    state: str
    name: str = ""
    args: str = ""
    kwargs: str = ""
    result: str = ""
    traceback: str = ""
    retries: int | None = None
    worker: str = ""
    queue: str = ""
    date_done: str = ""
    parent_id: str | None = None
    group_id: str | None = None
    in_backend: bool = False
    timeline: list[tuple[str, float, str]] = field(default_factory=list)
    graph: list[GraphNode] = field(default_factory=list)


class Sources:
    """The dashboard's reads and actions over one app.

    Args:
        app: The app (its broker and result backend).
        feed: The events feed.
        queues: Queues to show besides the configured ones and those seen in events.
    """

    def __init__(self, app: Celeriac, feed: EventFeed, *, queues: tuple[str, ...] = ()) -> None:
        self.app = app
        self.feed = feed
        self.extra_queues = queues
        self._first_seen: dict[str, float] = {}
        self._stored: tuple[float, list[ResultMeta]] | None = None
        self._stored_lock = threading.Lock()

    # -- what is shown about the setup ------------------------------------------------

    def broker_url(self) -> str:
        return redact_url(self.app.broker_url)

    def backend_url(self) -> str:
        try:
            return self.app.backend.safe_url()
        except CeleriacError as exc:
            return f"(unavailable: {exc})"

    # -- workers --------------------------------------------------------------------

    def workers(self) -> list[WorkerRow]:
        broker = self.app.broker
        now = time.time()
        by_worker: dict[str, list[Any]] = defaultdict(list)
        lost_after = float(getattr(broker, "lost_after", 30.0))
        if broker.supports_presence:
            for record in broker.consumers():
                by_worker[record.worker].append(record)
        beats = self.feed.workers()
        stats = self.feed.stats
        rows = []
        for name in sorted({*by_worker, *beats, *stats}):
            records = by_worker.get(name, [])
            beat = beats.get(name)
            reply = stats.get(name) or {}
            ages = [r.age for r in records]
            if beat is not None and beat.timestamp:
                ages.append(max(0.0, now - beat.timestamp))
            age = min(ages) if ages else None
            if records:
                state = "online" if min(r.age for r in records) <= lost_after else "silent"
            elif beat is not None:
                fresh = now - beat.timestamp < beat.freq * 2
                state = "offline" if beat.offline or not fresh else "online"
            else:
                state = "online (answered stats)"
            pool_reply = reply.get("pool") or {}
            rusage = reply.get("rusage") or {}
            rows.append(
                WorkerRow(
                    name=name,
                    state=state,
                    pool=", ".join(sorted({r.pool for r in records}))
                    or str(pool_reply.get("implementation", "")),
                    concurrency=sum(r.concurrency for r in records)
                    or int(pool_reply.get("max-concurrency") or 0),
                    consumers=len(records),
                    held=sum(r.held for r in records),
                    running=sum(len(r.running) for r in records),
                    heartbeat_age=age,
                    loadavg=" ".join(f"{x:.2f}" for x in (beat.loadavg or [])) if beat else "",
                    rss_kib=int(rusage["maxrss"]) if "maxrss" in rusage else None,
                    processed=beat.processed if beat else _processed(reply),
                    active=beat.active if beat else None,
                )
            )
        return rows

    # -- queues ---------------------------------------------------------------------

    def queue_names(self) -> list[str]:
        from celeriac.app.queues import parse_queues

        conf = self.app.conf
        names = {str(conf.task_default_queue), *self.extra_queues, *self.feed.queues_seen()}
        names.update(parse_queues(conf.task_queues))
        return sorted(names)

    def queues(self) -> list[QueueRow]:
        broker = self.app.broker
        now = time.time()
        rows = []
        for name in self.queue_names():
            rate_in, rate_out = self.feed.rates(name, now)
            try:
                depth = broker.depth(name)
            except BrokerError as exc:
                rows.append(QueueRow(name, 0, None, None, rate_in, rate_out, None, None, str(exc)))
                continue
            oldest_age = None
            if depth.oldest_id:
                seen = self.feed.sent_at(depth.oldest_id)
                if seen is None:
                    # Not in any event yet: count from when the dashboard first saw it.
                    seen = self._first_seen.setdefault(depth.oldest_id, now)
                oldest_age = max(0.0, now - seen)
            if len(self._first_seen) > 10_000:
                self._first_seen.clear()
            rows.append(
                QueueRow(
                    name,
                    depth.ready,
                    depth.delayed,
                    depth.held,
                    rate_in,
                    rate_out,
                    oldest_age,
                    depth.oldest_id,
                )
            )
        return rows

    # -- dead letters ---------------------------------------------------------------

    def dead_letters(self) -> tuple[list[DeadLetter], Counter[str]]:
        """The oldest dead letters, and how many there are per reason (of those read)."""
        letters = self.app.broker.list_dead_letters(limit=DEAD_LETTERS_SHOWN)
        return letters, Counter(_reason_kind(letter.reason) for letter in letters)

    # -- tasks ----------------------------------------------------------------------

    def search(
        self,
        *,
        name: str = "",
        state: str = "",
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> tuple[list[TaskRecord], str]:
        """Tasks newest first, filtered by name (substring), state and time, from the
        events cache and the backend's `SEARCH_STORED` newest results (a task in both is
        shown as the cache has it; the stored ones are read again after
        `SEARCH_STORED_FOR` seconds); and why the backend was left out, if it was.

        A stored record has a name only with `result_extended = True`."""
        cached = self.feed.search(name=name, state=state, since=since, until=until, limit=limit)
        try:
            stored = self._newest_stored()
        except NotImplementedError:
            note = "This result backend cannot list its results: tasks seen in events only."
            return cached, note
        except CeleriacError as exc:
            return cached, f"Cannot read the result backend ({exc}): tasks seen in events only."
        found = list(cached)
        for meta in stored:
            if self.feed.task(meta.task_id) is not None:
                continue
            record = _record_of(meta)
            if matches(record, name=name, state=state, since=since, until=until):
                found.append(record)
        found.sort(key=lambda task: task.updated, reverse=True)
        return found[:limit], ""

    def _newest_stored(self) -> list[ResultMeta]:
        """The backend's `SEARCH_STORED` newest results, read at most once per
        `SEARCH_STORED_FOR` seconds (one read at a time)."""
        with self._stored_lock:
            now = time.monotonic()
            if self._stored is not None and now - self._stored[0] < SEARCH_STORED_FOR:
                return self._stored[1]
            stored = self.app.backend.recent(SEARCH_STORED)
            self._stored = (now, stored)
            return stored

    def task(self, task_id: str) -> TaskView | None:
        """The task by id from the backend (the events cache fills the gaps)."""
        meta = self.app.backend.get(task_id)
        cached = self.feed.task(task_id)
        if meta is None and cached is None:
            return None
        view = TaskView(id=task_id, state="PENDING")
        if meta is not None:
            view.state = meta.status
            _fill_from_meta(view, meta)
        if cached is not None:
            view.name = view.name or (cached.name or "")
            view.args = view.args or truncate(cached.args or "")
            view.kwargs = view.kwargs or truncate(cached.kwargs or "")
            view.worker = view.worker or (cached.hostname or "")
            view.queue = view.queue or (cached.queue or "")
            view.retries = view.retries if view.retries is not None else cached.retries
            view.parent_id = view.parent_id or cached.parent_id
            if not view.result and cached.result is not None:
                view.result = truncate(cached.result)
            if not view.traceback and cached.traceback:
                view.traceback = cached.traceback
            if meta is None or meta.status == "PENDING":
                view.state = cached.state
            view.timeline = sorted(cached.timeline, key=lambda entry: entry[1])
        view.graph = self.graph(task_id)
        return view

    def graph(self, task_id: str) -> list[GraphNode]:
        """The workflow around `task_id`: up to its root by `parent_id`, then down by
        the stored children and the events' parent links, groups side by side."""
        root = task_id
        # The way back down from the root: the stored children may not name it (a
        # chord's body is no child of its header), so it is kept from the walk up.
        down: dict[str, str] = {}
        for _ in range(GRAPH_NODES):
            meta = self.app.backend.get(root)
            parent = (meta.parent_id if meta else None) or _cached_parent(self.feed, root)
            if not parent or parent == root or parent in down:
                break
            down[parent] = root
            root = parent
        nodes: dict[str, GraphNode] = {}
        frontier: list[tuple[str, str | None, str | None, int]] = [(root, None, None, 0)]
        while frontier and len(nodes) < GRAPH_NODES:
            current, parent, group, depth = frontier.pop(0)
            if current in nodes:
                continue
            meta = self.app.backend.get(current)
            cached = self.feed.task(current)
            name = (meta.name if meta else None) or (cached.name if cached else None) or "?"
            state = meta.status if meta and meta.status != "PENDING" else None
            state = state or (cached.state if cached else "PENDING")
            group = (meta.group_id if meta else None) or group
            nodes[current] = GraphNode(current, name, state, parent, group, depth)
            following: list[tuple[str, str | None]] = []
            if meta is not None:
                following += _child_ids(meta.children)
                if meta.group_id and depth == 0:
                    # A group's members side by side, when the group was saved.
                    for member, _ in self._group_members(meta.group_id):
                        if member != current:
                            frontier.append((member, None, meta.group_id, 0))
            following += [(c.uuid, None) for c in self.feed.children_of(current)]
            if current in down:
                following.append((down[current], None))
            for child, child_group in following:
                if child not in nodes:
                    frontier.append((child, current, child_group, depth + 1))
        columns: dict[int, int] = defaultdict(int)
        for node in nodes.values():
            node.column = columns[node.depth]
            columns[node.depth] += 1
        return list(nodes.values())

    def _group_members(self, group_id: str) -> list[tuple[str, str | None]]:
        try:
            stored = self.app.backend.get_group(group_id)
        except (CeleriacError, NotImplementedError):
            return []
        # A saved GroupResult is its `as_tuple()`: [[group_id, parent], [members...]].
        if isinstance(stored, list | tuple) and len(stored) == 2:
            return _child_ids([_as_lists(stored)])
        # Not saved (a plain group, a chord's header): the newest stored results that
        # carry the group's id (task events do not name a task's group).
        try:
            newest = self._newest_stored()
        except (CeleriacError, NotImplementedError):
            newest = []
        members = sorted({meta.task_id for meta in newest if meta.group_id == group_id})
        return [(member, group_id) for member in members]

    # -- actions --------------------------------------------------------------------

    def revoke(self, task_id: str, *, terminate: bool) -> None:
        self.app.control.revoke(task_id, terminate=terminate)

    def rate_limit(self, task_name: str, rate: str) -> int:
        """Set `task_name`'s rate limit on every worker; returns how many replied."""
        replies = self.app.control.rate_limit(task_name, rate or None, reply=True, timeout=1.0)
        return len(replies or [])

    def replay(self, dead_letter_id: str) -> bool:
        return self.app.broker.replay_dead_letter(dead_letter_id)

    def purge_dead_letters(self) -> int:
        return self.app.broker.purge_dead_letters()

    def purge_queue(self, queue: str) -> int:
        return self.app.broker.purge(queue)


def _processed(reply: dict[str, Any]) -> int | None:
    """Tasks run, from a `stats` reply (`total`: task name -> count)."""
    total = reply.get("total")
    if isinstance(total, dict):
        return sum(int(n) for n in total.values() if isinstance(n, int))
    return None


def _fill_from_meta(view: TaskView, meta: ResultMeta) -> None:
    view.in_backend = True
    view.name = meta.name or ""
    view.args = truncate(meta.args) if meta.args is not None else ""
    view.kwargs = truncate(meta.kwargs) if meta.kwargs is not None else ""
    if meta.status == "SUCCESS":
        view.result = truncate(meta.result)
    elif isinstance(meta.result, dict) and "exc_type" in meta.result:
        view.result = truncate(f"{meta.result.get('exc_type')}: {meta.result.get('exc_message')}")
    elif meta.result is not None:
        view.result = truncate(meta.result)
    view.traceback = meta.traceback or ""
    view.retries = meta.retries
    view.worker = meta.worker or ""
    view.queue = meta.queue or ""
    view.date_done = meta.date_done.isoformat() if meta.date_done else ""
    view.parent_id = meta.parent_id
    view.group_id = meta.group_id


def _record_of(meta: ResultMeta) -> TaskRecord:
    """A stored result as the search lists it."""
    done = meta.date_done.timestamp() if meta.date_done else 0.0
    return TaskRecord(
        meta.task_id,
        state=meta.status,
        name=meta.name,
        hostname=meta.worker,
        args=repr(meta.args) if meta.args is not None else None,
        kwargs=repr(meta.kwargs) if meta.kwargs is not None else None,
        retries=meta.retries,
        parent_id=meta.parent_id,
        queue=meta.queue,
        first_seen=done,
        updated=done,
    )


def _cached_parent(feed: EventFeed, task_id: str) -> str | None:
    cached: TaskRecord | None = feed.task(task_id)
    return cached.parent_id if cached else None


def _child_ids(children: Any, group: str | None = None) -> list[tuple[str, str | None]]:
    """Task ids in Celery's stored `children` (`as_tuple()` forms: `[[id, parent], None]`
    for a result, `[[group_id, parent], [members...]]` for a group)."""
    found: list[tuple[str, str | None]] = []
    if not isinstance(children, list):
        return found
    for child in children:
        if not (isinstance(child, list) and len(child) == 2 and isinstance(child[0], list)):
            continue
        head, members = child
        if not head or not isinstance(head[0], str):
            continue
        if isinstance(members, list):
            found += _child_ids(members, head[0])
        else:
            found.append((head[0], group))
    return found


def _as_lists(value: Any) -> Any:
    """Tuples (as a backend may decode them) as lists, at any depth."""
    if isinstance(value, list | tuple):
        return [_as_lists(item) for item in value]
    return value


def _reason_kind(reason: str) -> str:
    """A reason without its details (`task x crashed 3 times: ...` -> its head)."""
    return truncate(reason.split(":", 1)[0], 80)
