"""The broker interface: a small ABC every transport implements, and the values it moves.

A broker moves messages, not tasks: it knows queues, priorities, leases and instants,
never task names or results. The contract, which `tests/contract/test_brokers.py` checks
on every implementation:

- `publish` stores a message durably in a queue; with `eta` the message stays invisible
  (broker-side, never in a worker) until that instant.
- `receive` hands out up to `limit` visible messages, highest priority first
  (`supports_priority`), FIFO within a priority, each *leased* to this broker's
  `consumer_id` for `visibility_timeout` seconds. It waits up to `timeout` seconds when
  nothing is visible and returns `[]` then.
- `ack` removes a leased message; `reject(requeue=True)` makes it visible again at once;
  `reject(requeue=False)` drops it.
- `defer` hands a leased message back to wait until an instant (ETA, rate limits).
- `extend` renews leases; a lease that lapses makes its message visible again (any
  consumer's `receive` or `restore_expired` notices), flagged `redelivered`.
- `recover(consumer_id)` returns at once every message a dead consumer held. Tags listed
  in `running` were executing when it died: their `crashes` count goes up by one, which
  is how the worker bounds a message that keeps killing processes. Tags in `discard` are
  removed instead of returned (their task already has a final state).
- `dead_letter` moves a leased message to the dead-letter store with a reason;
  `list_dead_letters`/`replay_dead_letter`/`purge_dead_letters` manage that store.
- `reserve_rate_slot` (when `supports_rate_limit`) implements a cluster-wide, evenly
  spaced rate limit: it returns the instant at which the caller may start.
- Presence (when `supports_presence`): `heartbeat` keeps this consumer's record fresh,
  stamped with the server's clock; `reap` returns the messages of every consumer silent
  for longer than `lost_after` (the `worker_lost_after` setting), each message once even
  when several reapers race, counting a crash against what it was running; `consumers`
  lists the records; `withdraw` removes this consumer's record on a clean exit.

Methods used by producers (`publish`, `publish_many`, `declare`, `size`) must be safe to
call from many threads at once. A broker object must not be used across `fork()`; the
app makes a new one in the child.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, final

from celeriac._time import Clock, SystemClock
from celeriac._urls import redact_url
from celeriac.brokers.dead_letter_limits import DeadLetterLimits

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence
    from datetime import datetime

    from celeriac.protocol.message import Message

__all__ = [
    "DEFAULT_WORKER_LOST_AFTER",
    "INVALID_ENVELOPE",
    "Broker",
    "BrokerStats",
    "ConsumerRecord",
    "DeadLetter",
    "Deferral",
    "Delivery",
    "Outgoing",
    "QueueDepth",
    "clamp_priority",
]

logger = logging.getLogger(__name__)

# Content type of a message a broker could not read (corrupt envelope or row): it is
# handed out anyway, so the worker dead-letters it with a reason.
INVALID_ENVELOPE = "application/x-invalid-envelope"
# Celery priorities run 0..9.
MIN_PRIORITY = 0
MAX_PRIORITY = 9
# `worker_lost_after`: seconds of silence after which a consumer is presumed dead (see
# `app/config.py` for why it is tens of seconds).
DEFAULT_WORKER_LOST_AFTER = 30.0


def clamp_priority(priority: int | None) -> int:
    """Clamp a Celery priority into 0..9 (None means 0)."""
    if priority is None:
        return MIN_PRIORITY
    return max(MIN_PRIORITY, min(MAX_PRIORITY, int(priority)))


@final
@dataclass(frozen=True, slots=True)
class Delivery:
    """A leased message handed to a consumer.

    Attributes:
        message: The message as published.
        queue: The queue it came from.
        tag: The broker's delivery tag; unique among messages currently leased.
        exchange: Exchange it was published to (`""` for the default exchange).
        routing_key: Routing key it was published with.
        redelivered: True when it was handed out before (lease lapsed, requeued, recovered).
        crashes: How many consumers died while running it.
        handle: Transport-private data needed to ack or restore it.
    """

    message: Message
    queue: str
    tag: str
    exchange: str = ""
    routing_key: str = ""
    redelivered: bool = False
    crashes: int = 0
    handle: Any = field(default=None, compare=False, repr=False)

    @property
    def delivery_info(self) -> dict[str, Any]:
        """Celery's `request.delivery_info`."""
        return {
            "exchange": self.exchange,
            "routing_key": self.routing_key or self.queue,
            "priority": self.message.properties.get("priority"),
            "redelivered": self.redelivered,
        }


@final
@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for `publish_many`."""

    message: Message
    queue: str
    eta: datetime | None = None
    priority: int | None = None
    exchange: str = ""
    routing_key: str | None = None


@final
@dataclass(frozen=True, slots=True)
class Deferral:
    """One leased message for `defer_many`: it waits broker-side until `eta`."""

    delivery: Delivery
    eta: datetime
    message: Message | None = None


@final
@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message in the dead-letter store, with why it is there."""

    id: str
    queue: str
    reason: str
    message: Message
    failed_at: datetime
    #: The body's full size in bytes when the store kept only a prefix of it
    #: (`dead_letter_body_max`); None when the body is whole.
    body_size: int | None = None


@final
@dataclass(frozen=True, slots=True)
class ConsumerRecord:
    """One consuming process as its presence record shows it.

    Attributes:
        consumer_id: Who owns its leases (`<worker>:<pid>`).
        worker: The worker's node name (`name@host`).
        host: The machine it runs on.
        pid: Its process id.
        pool: The worker's pool (prefork, threads, solo, asyncio).
        concurrency: Tasks it runs at once.
        started: When it registered (epoch seconds, the broker server's clock).
        heartbeat: Its last heartbeat (epoch seconds, the broker server's clock).
        held: Messages it held at its last heartbeat (prefetched and running).
        running: Delivery tags it was running at its last heartbeat.
        age: Seconds since its last heartbeat, by the server's clock when it was read.
    """

    consumer_id: str
    worker: str
    host: str
    pid: int
    pool: str
    concurrency: int
    started: float
    heartbeat: float
    held: int
    running: tuple[str, ...]
    age: float


@final
@dataclass(frozen=True, slots=True)
class QueueDepth:
    """What waits in one queue, by kind (the dashboard's queue page reads these).

    Attributes:
        queue: The queue's name.
        ready: Messages a worker can fetch now.
        delayed: Messages waiting broker-side for their ETA; None when the broker cannot
            tell them apart from ready ones.
        held: Messages leased by a consumer (fetched, not yet acked); None when unknown.
        oldest_id: The task id of the message next in line to be fetched, if any.
    """

    queue: str
    ready: int
    delayed: int | None = None
    held: int | None = None
    oldest_id: str | None = None


@final
@dataclass(frozen=True, slots=True)
class BrokerStats:
    """Counters a broker object keeps about its own traffic."""

    transport: str
    published: int
    received: int
    acked: int
    rejected: int
    dead_lettered: int


class Broker(ABC):
    """A message transport. One instance per process (and per thread where needed).

    Args:
        url: The transport URL.
        transport_options: `broker_transport_options` (e.g. `visibility_timeout`).
        consumer_id: Who owns the leases this instance takes; the worker passes a stable
            name per process so that a supervisor can `recover` a dead child's messages.
        clock: Injected clock (tests).
    """

    #: URL schemes this class serves.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Priorities 0-9 are honoured.
    supports_priority: ClassVar[bool] = True
    #: Higher numbers are served first (Celery on AMQP); False: 0 first (Celery on Redis).
    higher_priority_first: ClassVar[bool] = True
    #: `publish(eta=...)` keeps the message on the broker until due.
    supports_native_delay: ClassVar[bool] = True
    #: `reserve_rate_slot` is implemented, shared by every process on this broker.
    supports_rate_limit: ClassVar[bool] = False
    #: Leases lapse and must be renewed with `extend` (False: held while connected).
    supports_leases: ClassVar[bool] = True
    #: `recover` can return another consumer's messages (False: the server returns a
    #: dead consumer's messages itself when its connection drops, as RabbitMQ does).
    supports_recover: ClassVar[bool] = True
    #: How late (seconds) a delayed message may be handed out after its ETA; never early.
    delay_precision: ClassVar[float] = 0.05
    #: Default lease length in seconds when `visibility_timeout` is not set.
    default_visibility_timeout: ClassVar[float] = 300.0
    #: Consumers keep presence records here (`heartbeat`, `reap`, `consumers`).
    supports_presence: ClassVar[bool] = False

    def __init__(
        self,
        url: str,
        *,
        transport_options: Mapping[str, Any] | None = None,
        consumer_id: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.url = url
        self.transport_options: dict[str, Any] = dict(transport_options or {})
        self.consumer_id = consumer_id or "producer"
        self.clock: Clock = clock or SystemClock()
        timeout = self.transport_options.get("visibility_timeout")
        self.visibility_timeout = (
            float(timeout) if timeout is not None else self.default_visibility_timeout
        )
        # The app passes its `worker_lost_after` setting down with the transport options.
        lost_after = self.transport_options.get("worker_lost_after")
        self.lost_after = float(lost_after) if lost_after is not None else DEFAULT_WORKER_LOST_AFTER
        self.dead_letter_limits = DeadLetterLimits.from_options(self.transport_options)
        self._published = 0
        self._received = 0
        self._acked = 0
        self._rejected = 0
        self._dead_lettered = 0

    # -- lifecycle ------------------------------------------------------------------

    @abstractmethod
    def connect(self) -> None:
        """Open connections now (otherwise the first operation does)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections. Leases held stay held until recovered or lapsed."""

    def __enter__(self) -> Broker:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- producing ------------------------------------------------------------------

    @abstractmethod
    def declare(self, queue: str) -> None:
        """Make sure `queue` exists (idempotent)."""

    def declare_binding(self, queue: str, *, exchange: str, routing_key: str) -> None:
        """Make sure `queue` exists and receives what `exchange` routes with
        `routing_key` (brokers that route by queue name only declare the queue)."""
        self.declare(queue)

    @abstractmethod
    def publish(
        self,
        message: Message,
        *,
        queue: str,
        eta: datetime | None = None,
        priority: int | None = None,
        exchange: str = "",
        routing_key: str | None = None,
    ) -> None:
        """Store `message` in `queue`; invisible until `eta` when given.

        Returns only once the broker has taken the message.

        Raises:
            PublishError: the broker did not take it.
            BrokerConnectionError: the broker cannot be reached.
        """

    def publish_many(self, items: Sequence[Outgoing]) -> None:
        """Publish several messages, in one round trip where the transport allows."""
        for item in items:
            self.publish(
                item.message,
                queue=item.queue,
                eta=item.eta,
                priority=item.priority,
                exchange=item.exchange,
                routing_key=item.routing_key,
            )

    # -- consuming ------------------------------------------------------------------

    @abstractmethod
    def receive(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[Delivery]:
        """Lease up to `limit` visible messages from `queues`, waiting up to `timeout`."""

    def receive_after_ack(
        self, acks: Sequence[Delivery], queues: Sequence[str], *, limit: int, timeout: float
    ) -> list[Delivery]:
        """Ack `acks`, then `receive` (in one round trip where the transport allows: the
        consumer sends each batch's acks with the next fetch)."""
        if acks:
            self.ack_many(acks)
        return self.receive(queues, limit=limit, timeout=timeout)

    @abstractmethod
    def ack(self, delivery: Delivery) -> None:
        """Remove a leased message: it was handled."""

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several messages, in one round trip where the transport allows."""
        for delivery in deliveries:
            self.ack(delivery)

    @abstractmethod
    def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        """Give a leased message back (visible at once) or drop it."""

    def defer(self, delivery: Delivery, *, eta: datetime, message: Message | None = None) -> None:
        """Hand a leased message back to wait broker-side until `eta` (ETA, rate limit).

        `message` replaces the stored one (e.g. with an extra header). The default
        publishes a delayed copy and then acks, so a crash in between duplicates rather
        than loses; brokers that can do it atomically override this.
        """
        self.publish(
            message or delivery.message,
            queue=delivery.queue,
            eta=eta,
            priority=delivery.message.priority,
            exchange=delivery.exchange,
            routing_key=delivery.routing_key or None,
        )
        self.ack(delivery)

    def defer_many(self, deferrals: Sequence[Deferral]) -> None:
        """`defer` several leased messages (a worker hands back a fetched batch's early
        ETA and rate-limited messages together). The default defers them one by one;
        brokers that can send them in one round trip override this."""
        for item in deferrals:
            self.defer(item.delivery, eta=item.eta, message=item.message)

    def stop_consuming(self) -> None:  # noqa: B027 - most brokers hold nothing to stop
        """Take no more messages (warm shutdown). What is held stays held; brokers that
        push messages to a subscribed consumer (RabbitMQ) cancel the subscription, so
        that messages handed back with `requeue_many` go to other consumers."""

    def requeue_many(self, deliveries: Sequence[Delivery]) -> None:
        """Return several leased messages to their queues at once (shutdown)."""
        for delivery in deliveries:
            self.reject(delivery, requeue=True)

    @abstractmethod
    def extend(self, deliveries: Sequence[Delivery], *, seconds: float) -> None:
        """Renew the leases of `deliveries` to last `seconds` from now."""

    @abstractmethod
    def recover(
        self,
        consumer_id: str,
        *,
        running: Collection[str] = (),
        discard: Collection[str] = (),
    ) -> int:
        """Return every message `consumer_id` holds to its queue; return how many.

        Args:
            consumer_id: The dead consumer.
            running: Tags that were executing: their crash count goes up by one.
            discard: Tags to remove instead of return.
        """

    def restore_expired(self) -> int:
        """Make messages whose lease lapsed visible again; return how many.

        Brokers whose `receive` already treats lapsed leases as visible need nothing here.
        """
        return 0

    # -- dead letters ---------------------------------------------------------------

    @abstractmethod
    def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        """Move a leased message to the dead-letter store with `reason` (and ack it)."""

    @abstractmethod
    def list_dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest `limit` dead letters."""

    @abstractmethod
    def replay_dead_letter(self, dead_letter_id: str) -> bool:
        """Publish a dead letter again to its queue and remove it; False if unknown."""

    @abstractmethod
    def purge_dead_letters(self) -> int:
        """Delete every dead letter; return how many."""

    def dead_letter_count(self) -> int:
        """How many dead letters the store holds (brokers with an index count it at once;
        this default lists them, up to 100,000)."""
        return len(self.list_dead_letters(limit=100_000))

    # -- queues ---------------------------------------------------------------------

    @abstractmethod
    def size(self, queue: str) -> int:
        """Messages waiting in `queue` (visible or delayed, not leased)."""

    @abstractmethod
    def purge(self, queue: str) -> int:
        """Delete every waiting message in `queue`; return how many."""

    def depth(self, queue: str) -> QueueDepth:
        """What waits in `queue`, by kind as far as this broker can tell."""
        return QueueDepth(queue=queue, ready=self.size(queue))

    # -- rate limits ----------------------------------------------------------------

    def reserve_rate_slot(self, key: str, *, interval: float) -> float:
        """Reserve the next start slot for `key`, `interval` seconds after the last one.

        Returns the slot as epoch seconds: `max(now, previous slot + interval)`.
        Atomic across every process using this broker.

        Raises:
            NotImplementedError: `supports_rate_limit` is False.
        """
        raise NotImplementedError(f"{type(self).__name__} has no shared rate limiter")

    # -- presence -------------------------------------------------------------------

    def heartbeat(
        self,
        identity: Mapping[str, str | int],
        *,
        held: int,
        running: Sequence[str],
        register: bool = False,
    ) -> bool:
        """Refresh this consumer's presence record, stamped with the server's clock.

        Args:
            identity: worker, host, pid, pool, concurrency (written when registering).
            held: Messages held now.
            running: Tags running now (a reaper counts a crash against them).
            register: Create the record (start, or again after being reaped).

        Returns:
            False when the record is gone or being reaped (this consumer was silent for
            longer than `lost_after` and presumed dead): register again.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no presence records")

    def reap(self) -> dict[str, int]:
        """Return the messages of every consumer silent for longer than `lost_after`
        (a crash counted against the ones it was running) and remove its record.
        Returns consumer id -> messages returned, for the consumers reaped here."""
        raise NotImplementedError(f"{type(self).__name__} keeps no presence records")

    def consumers(self) -> list[ConsumerRecord]:
        """Every presence record, silent ones included (see `ConsumerRecord.age`)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no presence records")

    def withdraw(self, *, hand_off: bool = False) -> None:  # noqa: B027 - no record to remove
        """Remove this consumer's presence record (a clean exit).

        Args:
            hand_off: The worker is shutting down: if no consumer is left alive, hand
                what waits broker-side for its ETA to whatever else reads the queues
                (Redis: the lists, for stock Celery workers).
        """

    # -- introspection --------------------------------------------------------------

    def startup_warnings(self) -> list[str]:
        """Problems worth a warning when a worker starts (e.g. an evicting Redis)."""
        return []

    def overdue_age(self, queue: str) -> float | None:
        """Seconds the most overdue ETA message of `queue` has waited past its due time
        without being moved into the queue (its workers are stalled or gone); None when
        none is overdue (for monitors).

        Raises:
            NotImplementedError: the broker keeps no due times it can read back.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot tell how overdue a message is")

    def stats(self) -> BrokerStats:
        return BrokerStats(
            transport=self.schemes[0] if self.schemes else type(self).__name__,
            published=self._published,
            received=self._received,
            acked=self._acked,
            rejected=self._rejected,
            dead_lettered=self._dead_lettered,
        )

    def safe_url(self) -> str:
        """The URL with any password replaced by `***` (for banners and logs)."""
        return redact_url(self.url)
