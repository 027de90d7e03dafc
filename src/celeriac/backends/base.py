"""The result backend interface, the stored record, and what every backend shares.

A backend stores one record per task id in Celery's layout (spec §3.2), group records for
`GroupResult.save()`, and chord join state. The contract, checked on every implementation
by `tests/contract/test_backends.py`:

- `store` writes a record (expiring after `result_expires`) and wakes readers waiting on
  it. A stored SUCCESS is final: a later `store` for the same id is ignored (Celery's
  dedupe guard), so a redelivered duplicate cannot overwrite a good result.
- `get` returns the record or None (the reader then reports PENDING).
- `wait` returns once the record is in a ready state, without busy polling, or raises
  `ResultTimeout`.
- `set_chord_size` + `chord_part_return` join a chord by an atomic counter: the call that
  completes the header gets every part in header order, exactly once; nobody polls.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, final

from celeriac import states
from celeriac._time import UTC, Clock, SystemClock, from_iso, to_iso
from celeriac._urls import redact_url
from celeriac.exceptions import BackendError, ResultTimeout, SerializationError
from celeriac.protocol.serializers import get_serializer, loads, normalize_accept

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "DEFAULT_RESULT_EXPIRES",
    "REVOCATION_TTL",
    "ChordPart",
    "ResultBackend",
    "ResultMeta",
    "Revocation",
    "check_limit",
    "chord_key",
    "group_key",
    "newest_first",
    "task_key",
]

# Celery's default result_expires: one day.
DEFAULT_RESULT_EXPIRES = 86400.0
# How long revocations are remembered (Celery keeps revoked ids three hours).
REVOCATION_TTL = 3 * 3600.0

# Celery compat: key names of the Redis backend, reused by every key-value backend.
TASK_KEY_PREFIX = "celery-task-meta-"
GROUP_KEY_PREFIX = "celery-taskset-meta-"


def task_key(task_id: str) -> str:
    return f"{TASK_KEY_PREFIX}{task_id}"


def group_key(group_id: str) -> str:
    return f"{GROUP_KEY_PREFIX}{group_id}"


def newest_first(metas: Iterable[ResultMeta], limit: int) -> list[ResultMeta]:
    """The `limit` newest of `metas` by `date_done` (records without one last; ties keep
    the order given)."""
    ordered = sorted(
        metas,
        key=lambda meta: meta.date_done.timestamp() if meta.date_done else float("-inf"),
        reverse=True,
    )
    return ordered[:limit]


def check_limit(limit: int) -> None:
    """Refuse a `recent` limit below 1."""
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"recent(limit={limit!r}): the limit must be a positive integer")


def chord_key(group_id: str, suffix: str) -> str:
    """`.j` (joined parts), `.t` (size delta), `.s` (size) keys of a chord."""
    return f"{GROUP_KEY_PREFIX}{group_id}.{suffix}"


@final
@dataclass(frozen=True, slots=True)
class ResultMeta:
    """One stored task result, in Celery's fields.

    `result` is the decoded return value for SUCCESS, the stored exception dict
    (`exc_type`/`exc_message`/`exc_module`) for RETRY, FAILURE and REVOKED, or the meta
    dict of a custom state. Rebuilding exceptions is the reader's job
    (`protocol.errors.decode_exception`), never the backend's.
    """

    task_id: str
    status: str
    result: Any = None
    traceback: str | None = None
    children: list[Any] = field(default_factory=list)
    date_done: datetime | None = None
    group_id: str | None = None
    parent_id: str | None = None
    name: str | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    worker: str | None = None
    retries: int | None = None
    queue: str | None = None

    @property
    def is_ready(self) -> bool:
        return self.status in states.READY_STATES

    def to_dict(self) -> dict[str, Any]:
        """Celery's stored JSON object, in the key order stock Celery writes."""
        data: dict[str, Any] = {
            "status": self.status,
            "result": self.result,
            "traceback": self.traceback,
            "children": self.children,
            "date_done": to_iso(self.date_done) if self.date_done is not None else None,
        }
        if self.group_id is not None:
            data["group_id"] = self.group_id
        if self.parent_id is not None:
            data["parent_id"] = self.parent_id
        if self.name is not None:
            data["name"] = self.name
            data["args"] = self.args
            data["kwargs"] = self.kwargs
            data["worker"] = self.worker
            data["retries"] = self.retries
            data["queue"] = self.queue
        data["task_id"] = self.task_id
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, task_id: str | None = None) -> ResultMeta:
        """Read a stored object (ours or stock Celery's).

        Raises:
            BackendError: `data` is not a task result record.
        """
        status = data.get("status")
        tid = data.get("task_id") or task_id
        if not isinstance(status, str) or not isinstance(tid, str):
            raise BackendError(f"stored result has no status or task_id: {dict(data)!r}")
        date_done = data.get("date_done")
        done: datetime | None = None
        if isinstance(date_done, datetime):
            done = date_done
        elif isinstance(date_done, str):
            try:
                done = from_iso(date_done)
            except ValueError:
                done = None
        children = data.get("children")
        retries = data.get("retries")
        return cls(
            task_id=tid,
            status=status,
            result=data.get("result"),
            traceback=data.get("traceback"),
            children=list(children) if isinstance(children, list | tuple) else [],
            date_done=done,
            group_id=data.get("group_id"),
            parent_id=data.get("parent_id"),
            name=data.get("name"),
            args=data.get("args"),
            kwargs=data.get("kwargs"),
            worker=data.get("worker"),
            retries=retries if isinstance(retries, int) else None,
            queue=data.get("queue"),
        )


@final
@dataclass(frozen=True, slots=True)
class Revocation:
    """One entry of the revocation log."""

    task_id: str
    terminate: bool
    at: float


@final
@dataclass(frozen=True, slots=True)
class ChordPart:
    """One finished header task of a chord."""

    index: float
    task_id: str
    status: str
    result: Any


class ResultBackend(ABC):
    """Stores task results and chord state.

    Args:
        url: The backend URL.
        serializer: `result_serializer`.
        accept: `result_accept_content` (falls back to `accept_content`).
        expires: Seconds a result is kept (`result_expires`); None keeps it forever.
        transport_options: `result_backend_transport_options`.
        clock: Injected clock (tests).
    """

    #: URL schemes this class serves.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Chords join through `chord_part_return` (False: the backend cannot join chords).
    supports_native_join: ClassVar[bool] = True
    #: `get` reads a shared store (False for `rpc://`, whose results go to one client).
    supports_lookup: ClassVar[bool] = True
    #: `note_crash`/`crash_count` are kept, shared by every worker (see below).
    supports_crash_ledger: ClassVar[bool] = False
    #: `reserve_rate_slot` is shared by every worker (used when the broker has none).
    supports_rate_limit: ClassVar[bool] = False
    #: `revoke`/`revoked_since` keep a revocation log that workers follow.
    supports_revocation: ClassVar[bool] = False
    #: `recent` lists the newest stored results (the dashboard's search reads it).
    supports_recent: ClassVar[bool] = False
    #: Seconds between polls in the default `wait`, growing to `_max_poll`.
    _min_poll: ClassVar[float] = 0.005
    _max_poll: ClassVar[float] = 0.2

    def __init__(
        self,
        url: str,
        *,
        serializer: str = "json",
        accept: Iterable[str] = ("json",),
        expires: float | timedelta | None = DEFAULT_RESULT_EXPIRES,
        transport_options: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.url = url
        self.serializer = get_serializer(serializer)
        self.accept = normalize_accept(accept)
        if isinstance(expires, timedelta):
            expires = expires.total_seconds()
        self.expires: float | None = float(expires) if expires else None
        self.transport_options: dict[str, Any] = dict(transport_options or {})
        self.clock: Clock = clock or SystemClock()

    # -- encoding, shared ------------------------------------------------------------

    def encode(self, value: Any) -> bytes:
        return self.serializer.dumps(value)

    def decode(self, data: bytes | str) -> Any:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        try:
            return loads(raw, self.serializer.content_type, accept=self.accept)
        except SerializationError as exc:
            raise BackendError(f"cannot decode a stored result: {exc}") from exc

    def encode_meta(self, meta: ResultMeta) -> bytes:
        return self.encode(meta.to_dict())

    def decode_meta(self, data: bytes | str, *, task_id: str | None = None) -> ResultMeta:
        value = self.decode(data)
        if not isinstance(value, dict):
            raise BackendError(f"stored result for {task_id} is not an object")
        return ResultMeta.from_dict(value, task_id=task_id)

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:  # noqa: B027 - most backends have nothing to release
        """Release connections."""

    # -- task results ----------------------------------------------------------------

    @abstractmethod
    def store(self, meta: ResultMeta) -> None:
        """Write `meta` (unless a SUCCESS is already stored) and wake its readers."""

    @abstractmethod
    def get(self, task_id: str) -> ResultMeta | None:
        """The stored record, or None."""

    def get_many(self, task_ids: Sequence[str]) -> dict[str, ResultMeta]:
        """Stored records by id; ids without one are left out."""
        found: dict[str, ResultMeta] = {}
        for task_id in task_ids:
            meta = self.get(task_id)
            if meta is not None:
                found[task_id] = meta
        return found

    def recent(self, limit: int) -> list[ResultMeta]:
        """Up to `limit` of the most recently stored results, newest first (by
        `date_done`; records without one come last). Each backend says how far it looks.

        Raises:
            NotImplementedError: this backend cannot list its results (`rpc://` sends
                each result to its caller; `django-db://` has no such query yet).
            ValueError: `limit` is below 1.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot list its stored results")

    @abstractmethod
    def forget(self, task_id: str) -> None:
        """Delete the record of `task_id`."""

    def wait(self, task_id: str, *, timeout: float | None = None) -> ResultMeta:
        """Block until `task_id` is ready; return its record.

        The default polls with a growing interval (5 ms → 200 ms); backends that can be
        notified override it.

        Raises:
            ResultTimeout: not ready within `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = self._min_poll
        while True:
            meta = self.get(task_id)
            if meta is not None and meta.is_ready:
                return meta
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ResultTimeout(f"task {task_id} not ready after {timeout} s")
                time.sleep(min(interval, remaining))
            else:
                time.sleep(interval)
            interval = min(interval * 2, self._max_poll)

    def wait_many(
        self, task_ids: Sequence[str], *, timeout: float | None = None
    ) -> dict[str, ResultMeta]:
        """Block until every id is ready; return their records.

        Raises:
            ResultTimeout: not all ready within `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        done: dict[str, ResultMeta] = {}
        for task_id in task_ids:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            done[task_id] = self.wait(task_id, timeout=remaining)
        return done

    async def wait_many_async(
        self, task_ids: Sequence[str], *, timeout: float | None = None
    ) -> dict[str, ResultMeta]:
        """`wait_many` for asyncio code: the event loop keeps running meanwhile.

        The default polls `get_many` with a growing interval (5 ms → 200 ms), each read
        in the loop's default thread pool (a database driver must not block the loop;
        Django refuses to be called from it); a backend without lookups (`rpc://`) waits
        in that pool. Backends that can be notified on the loop override it.

        Raises:
            ResultTimeout: not all ready within `timeout` seconds.
        """
        if not self.supports_lookup:
            return await asyncio.to_thread(self.wait_many, task_ids, timeout=timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        done: dict[str, ResultMeta] = {}
        interval = self._min_poll
        while True:
            pending = [tid for tid in task_ids if tid not in done]
            if not pending:
                return {tid: done[tid] for tid in task_ids}
            found = await asyncio.to_thread(self.get_many, pending)
            done.update((tid, meta) for tid, meta in found.items() if meta.is_ready)
            if len(done) == len(set(task_ids)):
                continue
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = ", ".join(sorted(set(task_ids) - set(done)))
                    raise ResultTimeout(f"task(s) {missing} not ready after {timeout} s")
                interval = min(interval, remaining)
            await asyncio.sleep(interval)
            interval = min(interval * 2, self._max_poll)

    def store_for_request(
        self, meta: ResultMeta, *, reply_to: str | None, correlation_id: str | None
    ) -> None:
        """Store `meta` for the caller of one request (`rpc://` sends it to the caller's
        reply queue; every other backend just stores it)."""
        self.store(meta)

    def reserve_rate_slot(self, key: str, *, interval: float) -> float:
        """Like `Broker.reserve_rate_slot`, for fleets whose broker keeps no rate slots
        (RabbitMQ) but whose result backend can."""
        raise NotImplementedError(f"{type(self).__name__} has no shared rate limiter")

    # -- revocations -------------------------------------------------------------------
    #
    # `app.control.revoke` appends ids here; every worker process reads what is new about
    # once a second and skips those tasks (or, with `terminate`, stops them running).
    # Entries are kept `REVOCATION_TTL` seconds, as Celery keeps revoked ids.

    def revoke(self, task_ids: Sequence[str], *, terminate: bool = False) -> None:
        """Append `task_ids` to the revocation log."""
        raise NotImplementedError(f"{type(self).__name__} keeps no revocation log")

    def revoked_since(self, cursor: float) -> tuple[list[Revocation], float]:
        """Revocations logged at or after `cursor` (epoch seconds); and the cursor to
        pass next time. Entries at the cursor itself may come back again."""
        raise NotImplementedError(f"{type(self).__name__} keeps no revocation log")

    def reply_queue(self) -> str | None:
        """The queue results come back to, declared and ready, for backends that send
        results to their caller (`rpc://`); None for backends that store them."""
        return None

    # -- crash ledger ----------------------------------------------------------------
    #
    # Brokers that cannot count deliveries (RabbitMQ's classic queues) leave it to the
    # result backend to remember how often a task's process died while running it, so
    # that the redelivery cap holds across workers there too.

    def note_crash(self, task_id: str) -> int:
        """Count one more death of a process running `task_id`; return the count."""
        raise NotImplementedError(f"{type(self).__name__} keeps no crash ledger")

    def crash_count(self, task_id: str) -> int:
        """How many processes died running `task_id` (0 when none)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no crash ledger")

    # -- groups ----------------------------------------------------------------------

    @abstractmethod
    def save_group(self, group_id: str, result: Any) -> None:
        """Store a group's `as_tuple()` form (`GroupResult.save`)."""

    @abstractmethod
    def get_group(self, group_id: str) -> Any | None:
        """The stored `as_tuple()` form of a group, or None."""

    @abstractmethod
    def delete_group(self, group_id: str) -> None:
        """Delete a stored group."""

    # -- chords ----------------------------------------------------------------------

    @abstractmethod
    def set_chord_size(self, group_id: str, size: int) -> None:
        """Record how many header parts chord `group_id` waits for."""

    @abstractmethod
    def chord_part_return(
        self,
        group_id: str,
        *,
        index: int | None,
        task_id: str,
        status: str,
        result: Any,
    ) -> list[ChordPart] | None:
        """Record one finished header part; return all parts (ordered by index) to the
        caller whose part completes the chord, None to everybody else.

        `result` is the JSON-able stored form (a value or an exception dict).
        """

    # True where `store_and_join` does both in one step (fewer round trips per part);
    # only for backends whose `store_for_request` is plain `store` (not `rpc://`).
    joins_with_store: ClassVar[bool] = False

    def store_and_join(
        self, meta: ResultMeta, group_id: str, *, index: int | None
    ) -> list[ChordPart] | None:
        """Store a header part's result `meta`, then report it (as part `index`) to chord
        `group_id`, as `chord_part_return` does. Backends that can do both in one round
        trip override it and set `joins_with_store`."""
        self.store(meta)
        return self.chord_part_return(
            group_id,
            index=index,
            task_id=meta.task_id,
            status=meta.status,
            result=meta.result,
        )

    # -- housekeeping ----------------------------------------------------------------

    def cleanup(self) -> int:
        """Delete expired results where the store does not expire them itself."""
        return 0

    def safe_url(self) -> str:
        """The URL with any password hidden."""
        return redact_url(self.url)

    def ready_meta(
        self,
        task_id: str,
        status: str,
        result: Any,
        *,
        traceback: str | None = None,
        children: list[Any] | None = None,
        group_id: str | None = None,
        parent_id: str | None = None,
    ) -> ResultMeta:
        """Build a record stamped with `date_done` when `status` is ready."""
        done = (
            datetime.fromtimestamp(self.clock.time(), UTC)
            if status in states.READY_STATES
            else None
        )
        return ResultMeta(
            task_id=task_id,
            status=status,
            result=result,
            traceback=traceback,
            children=children or [],
            date_done=done,
            group_id=group_id,
            parent_id=parent_id,
        )
