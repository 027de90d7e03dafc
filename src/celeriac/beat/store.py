"""Where beat keeps its state: the leader lease and each entry's last run, in the
broker's store (Redis, SQLite) or the result backend's (a RabbitMQ fleet).

The state of one schedule (named by `-s/--schedule`, default `celerybeat-schedule`):

- the lease: who leads, until when, and a fencing token that goes up by one each time
  the lease changes hands;
- per entry: a fingerprint of its definition (task, schedule, arguments, options), the
  scheduled time of its last run, and a pending claim (the tick being sent and the task
  id it is sent with) between the claim and the confirmation.

Every operation that changes state is one atomic step on the server (a Lua script on
Redis, one `BEGIN IMMEDIATE` transaction on SQLite), and the ones only a leader may do
(`reconcile`, `claim`) check the caller's fencing token in that same step, so a leader
that lost its lease can change nothing. Instants are integer microseconds since the
epoch (exact in Lua's doubles and in SQLite's integers), so every process names a tick
identically.

What does not live here: when to send (`scheduler.py`), the lease policy (`leader.py`).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, final

from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from celeriac._time import Clock
    from celeriac.app.base import Celeriac
    from celeriac.brokers.base import Broker, Outgoing

__all__ = [
    "DEFAULT_SCHEDULE_NAME",
    "ClaimResult",
    "EntryState",
    "Lease",
    "MemoryScheduleStore",
    "ScheduleStore",
    "open_store",
]

# Celery's default `-s` (a shelve file there; the name of the state in the store here).
DEFAULT_SCHEDULE_NAME = "celerybeat-schedule"

#: `claim`'s answer: "claimed" (send it now), "done" (the tick was sent already),
#: "pending" (an unconfirmed claim exists: re-send that first), "fenced" (the caller
#: does not hold the lease), "gone" (the entry was removed); `claim_and_send`'s answer
#: "sent" (claimed, published and confirmed in one step).
ClaimResult = Literal["claimed", "done", "pending", "fenced", "gone", "sent"]


@final
@dataclass(frozen=True, slots=True)
class EntryState:
    """One entry's stored state.

    Attributes:
        fingerprint: Digest of the entry's definition when it was last reconciled.
        last_run: Scheduled time (µs since the epoch) of the last tick sent or skipped.
        pending_tick: A claimed tick not yet confirmed (µs), or None.
        pending_task_id: The task id that claimed tick is sent with.
    """

    fingerprint: str
    last_run: int
    pending_tick: int | None = None
    pending_task_id: str | None = None


@final
@dataclass(frozen=True, slots=True)
class Lease:
    """`acquire`'s answer.

    Attributes:
        holder: Who holds the lease now (the caller when it won), or None.
        token: The fencing token of the caller's lease (0 when it does not hold it).
        remaining: Seconds until the lease lapses unless renewed.
    """

    holder: str | None
    token: int
    remaining: float

    def held_by(self, owner: str) -> bool:
        return self.holder == owner and self.token > 0


class ScheduleStore(ABC):
    """The state of one schedule in a shared store.

    Args:
        name: The schedule's name (`-s`); several schedules may share one store.
    """

    def __init__(self, name: str = DEFAULT_SCHEDULE_NAME) -> None:
        if not name:
            raise ImproperlyConfigured("the schedule name (-s/--schedule) must not be empty")
        self.name = name

    #: What `describe()` says about where state lives (for the start-up log).
    where: str = ""

    @property
    def shares_broker(self) -> bool:
        """Whether this state lives with the app's broker's queues, so `claim_and_send`
        may do claim, publish and confirm as one step."""
        return False

    @abstractmethod
    def acquire(self, owner: str, *, seconds: float) -> Lease:
        """Take the lease if it is free or lapsed, renew it if `owner` holds it."""

    @abstractmethod
    def release(self, owner: str) -> None:
        """Give the lease up at once if `owner` holds it (clean shutdown)."""

    @abstractmethod
    def leader(self) -> str | None:
        """Who holds a live lease now (read only), or None."""

    @abstractmethod
    def reconcile(
        self, owner: str, token: int, wanted: Mapping[str, str], *, now: int
    ) -> dict[str, EntryState] | None:
        """Make the stored entries match `wanted` (name -> fingerprint), atomically.

        New entries start with `last_run = now`; an entry whose fingerprint changed keeps
        its last run (so its new schedule applies from there); entries not in `wanted`
        are deleted. Returns the resulting states, or None when `token` is not the
        current lease (nothing changed).
        """

    @abstractmethod
    def load(self) -> dict[str, EntryState]:
        """Every stored entry's state."""

    @abstractmethod
    def claim(
        self, owner: str, token: int, name: str, *, last_run: int, tick: int, task_id: str
    ) -> ClaimResult:
        """Record that tick `tick` of `name` is being sent as `task_id`, if the caller
        leads (`token`), the stored last run is still `last_run` and no claim is pending."""

    @abstractmethod
    def resume(self, owner: str, token: int, name: str, *, tick: int) -> bool:
        """True if the caller leads (`token`) and `tick` of `name` is still pending: it
        may send that claim again. Fences re-sends as `claim` fences sends."""

    @abstractmethod
    def confirm(self, name: str, tick: int) -> None:
        """The pending claim of `tick` was sent: make it the last run (idempotent)."""

    def claim_and_send(
        self,
        owner: str,
        token: int,
        name: str,
        *,
        last_run: int,
        tick: int,
        items: Sequence[Outgoing],
    ) -> ClaimResult | None:
        """`claim`, publish `items` and `confirm`, as one atomic step on the server that
        holds both this state and the broker's queues: all three happen, or none.

        Returns "sent" when they happened, `claim`'s answer when the claim was refused
        (nothing published), or None when this store cannot do it for these items (the
        state is on another server than the queues, or the broker needs more than a plain
        write to publish them): the caller then claims, sends and confirms in turn.
        """
        return None

    def close(self) -> None:  # noqa: B027 - stores without connections hold nothing
        """Release connections."""


@final
class MemoryScheduleStore(ScheduleStore):
    """State in this process (the `memory://` broker; tests). Not shared: one process."""

    where = "process memory (memory:// broker)"

    def __init__(self, name: str = DEFAULT_SCHEDULE_NAME, *, clock: Clock | None = None) -> None:
        super().__init__(name)
        self._lock = threading.Lock()
        self._holder: str | None = None
        self._token = 0
        self._expires = 0.0
        self._entries: dict[str, EntryState] = {}
        self._time = clock.monotonic if clock is not None else time.monotonic

    def acquire(self, owner: str, *, seconds: float) -> Lease:
        with self._lock:
            now = self._time()
            if self._holder is None or self._expires <= now:
                self._token += 1
                self._holder = owner
            if self._holder != owner:
                return Lease(self._holder, 0, self._expires - now)
            self._expires = now + seconds
            return Lease(owner, self._token, seconds)

    def release(self, owner: str) -> None:
        with self._lock:
            if self._holder == owner:
                self._holder = None

    def leader(self) -> str | None:
        with self._lock:
            return self._holder if self._expires > self._time() else None

    def _leads(self, owner: str, token: int) -> bool:
        return self._holder == owner and self._token == token and self._expires > self._time()

    def reconcile(
        self, owner: str, token: int, wanted: Mapping[str, str], *, now: int
    ) -> dict[str, EntryState] | None:
        with self._lock:
            if not self._leads(owner, token):
                return None
            kept: dict[str, EntryState] = {}
            for name, fingerprint in wanted.items():
                old = self._entries.get(name)
                if old is None:
                    kept[name] = EntryState(fingerprint, now)
                else:
                    kept[name] = EntryState(
                        fingerprint, old.last_run, old.pending_tick, old.pending_task_id
                    )
            self._entries = kept
            return dict(kept)

    def load(self) -> dict[str, EntryState]:
        with self._lock:
            return dict(self._entries)

    def claim(
        self, owner: str, token: int, name: str, *, last_run: int, tick: int, task_id: str
    ) -> ClaimResult:
        with self._lock:
            if not self._leads(owner, token):
                return "fenced"
            state = self._entries.get(name)
            if state is None:
                return "gone"
            if state.pending_tick is not None:
                return "pending"
            if state.last_run != last_run:
                return "done"
            self._entries[name] = EntryState(state.fingerprint, state.last_run, tick, task_id)
            return "claimed"

    def resume(self, owner: str, token: int, name: str, *, tick: int) -> bool:
        with self._lock:
            state = self._entries.get(name)
            return self._leads(owner, token) and state is not None and state.pending_tick == tick

    def confirm(self, name: str, tick: int) -> None:
        with self._lock:
            state = self._entries.get(name)
            if state is not None and state.pending_tick == tick:
                self._entries[name] = EntryState(state.fingerprint, tick)


_STATEFUL_HINT = (
    "beat keeps its schedule state and leader lease in the broker's store (Redis or "
    "SQLite); with {broker} it uses the result backend's, which must be Redis or SQLite: "
    "set result_backend = 'redis://...' or 'sqlite:///...' (now {backend})"
)


def open_store(app: Celeriac, name: str = DEFAULT_SCHEDULE_NAME) -> ScheduleStore:
    """The store for `app`'s beat: the broker's Redis or SQLite, else (RabbitMQ) the
    result backend's, else a clear error naming what to configure.

    Raises:
        ImproperlyConfigured: neither the broker nor the result backend can keep state.
    """
    from celeriac._urls import redact_url

    candidates = (
        (app.broker_url, app.broker_transport_options()),
        (app.result_backend_url, dict(app.conf.result_backend_transport_options)),
    )
    for index, (url, options) in enumerate(candidates):
        scheme = url.partition("://")[0].lower()
        if scheme in ("redis", "rediss", "redis+socket"):
            from celeriac.beat.redis_store import RedisScheduleStore

            return RedisScheduleStore(url, options, name=name, broker=_shared(app, index))
        if scheme == "sqlite":
            from celeriac.beat.sqlite_store import SQLiteScheduleStore

            return SQLiteScheduleStore(url, options, name=name, broker=_shared(app, index))
        if scheme == "memory" and index == 0:
            return MemoryScheduleStore(name)
    raise ImproperlyConfigured(
        _STATEFUL_HINT.format(
            broker=redact_url(app.broker_url), backend=redact_url(app.result_backend_url)
        )
    )


def _shared(app: Celeriac, index: int) -> Broker | None:
    """The broker whose server holds the state (the first candidate), else None."""
    return app.broker if index == 0 else None
