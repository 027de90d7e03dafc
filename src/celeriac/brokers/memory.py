"""In-process broker (`memory://` or `memory://name`): tests, eager mode, a worker in a thread.

Every `MemoryBroker` with the same URL in one process shares one store, so a producer and
a worker thread see the same queues. Nothing survives the process.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from celeriac._time import UTC
from celeriac.brokers.base import Broker, ConsumerRecord, DeadLetter, Delivery, clamp_priority
from celeriac.exceptions import BrokerError

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence

    from celeriac.protocol.message import Message

__all__ = ["MemoryBroker"]


@dataclass(slots=True)
class _Entry:
    tag: str
    message: Message
    queue: str
    exchange: str
    routing_key: str
    priority: int
    seq: int
    redelivered: bool = False
    crashes: int = 0


@dataclass(slots=True)
class _Lease:
    entry: _Entry
    owner: str
    expires_at: float


@dataclass
class _Store:
    lock: threading.Condition = field(default_factory=threading.Condition)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    # queue → heap of (-priority, seq, entry)
    ready: dict[str, list[tuple[int, int, _Entry]]] = field(default_factory=dict)
    # heap of (eta, seq, entry)
    delayed: list[tuple[float, int, _Entry]] = field(default_factory=list)
    leased: dict[str, _Lease] = field(default_factory=dict)
    dead: dict[str, DeadLetter] = field(default_factory=dict)
    rate_slots: dict[str, float] = field(default_factory=dict)
    # consumer id → its presence record (the broker's clock stands for the server's)
    consumers: dict[str, ConsumerRecord] = field(default_factory=dict)


_stores: dict[str, _Store] = {}
_stores_lock = threading.Lock()


def _store_for(url: str) -> _Store:
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = _Store()
        return store


def _timestamp(eta: datetime | None) -> float | None:
    if eta is None:
        return None
    if eta.tzinfo is None:
        eta = eta.replace(tzinfo=UTC)  # naive means UTC, as on the wire
    return eta.timestamp()


class MemoryBroker(Broker):
    """A complete broker living in this process's memory."""

    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    supports_rate_limit: ClassVar[bool] = True
    supports_presence: ClassVar[bool] = True
    default_visibility_timeout: ClassVar[float] = 300.0

    def __init__(self, url: str = "memory://", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._store = _store_for(url)

    @classmethod
    def reset(cls, url: str = "memory://") -> None:
        """Forget everything stored under `url` (tests)."""
        with _stores_lock:
            _stores.pop(url, None)

    def connect(self) -> None:
        pass

    def close(self) -> None:
        pass

    def declare(self, queue: str) -> None:
        with self._store.lock:
            self._store.ready.setdefault(queue, [])

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
        store = self._store
        if priority is None:
            priority = message.priority
        with store.lock:
            entry = _Entry(
                tag=uuid.uuid4().hex,
                message=message,
                queue=queue,
                exchange=exchange,
                routing_key=routing_key or queue,
                priority=clamp_priority(priority),
                seq=next(store.seq),
            )
            self._put(entry, eta=_timestamp(eta))
            self._published += 1
            store.lock.notify_all()

    def _put(self, entry: _Entry, *, eta: float | None) -> None:
        store = self._store
        if eta is not None and eta > self.clock.time():
            heapq.heappush(store.delayed, (eta, entry.seq, entry))
        else:
            heapq.heappush(
                store.ready.setdefault(entry.queue, []), (-entry.priority, entry.seq, entry)
            )

    def _promote(self, now: float) -> float | None:
        """Move due delayed messages and lapsed leases to their queues; return the next
        instant something becomes visible, if any."""
        store = self._store
        while store.delayed and store.delayed[0][0] <= now:
            _, _, entry = heapq.heappop(store.delayed)
            self._put(entry, eta=None)
        for tag in [t for t, lease in store.leased.items() if lease.expires_at <= now]:
            lease = store.leased.pop(tag)
            lease.entry.redelivered = True
            # The last resort counts a crash against what a presence record lists running.
            record = store.consumers.get(lease.owner)
            if record is not None and tag in record.running:
                lease.entry.crashes += 1
            self._put(lease.entry, eta=None)
        upcoming = [store.delayed[0][0]] if store.delayed else []
        upcoming.extend(lease.expires_at for lease in store.leased.values())
        return min(upcoming) if upcoming else None

    def receive(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[Delivery]:
        store = self._store
        with store.lock:
            # Waiting is real time even under a fake clock (which only decides what is due).
            deadline = time.monotonic() + timeout
            while True:
                now = self.clock.time()
                next_due = self._promote(now)
                taken = self._take(queues, limit, now)
                if taken:
                    self._received += len(taken)
                    return taken
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                if next_due is not None:
                    remaining = min(remaining, max(0.001, next_due - now))
                store.lock.wait(remaining)

    def _take(self, queues: Sequence[str], limit: int, now: float) -> list[Delivery]:
        store = self._store
        taken: list[Delivery] = []
        heaps = [store.ready[q] for q in queues if store.ready.get(q)]
        while heaps and len(taken) < limit:
            best = min(heaps, key=lambda heap: heap[0][:2])
            _, _, entry = heapq.heappop(best)
            if not best:
                heaps.remove(best)
            store.leased[entry.tag] = _Lease(entry, self.consumer_id, now + self.visibility_timeout)
            taken.append(self._delivery(entry))
        return taken

    @staticmethod
    def _delivery(entry: _Entry) -> Delivery:
        return Delivery(
            message=entry.message,
            queue=entry.queue,
            tag=entry.tag,
            exchange=entry.exchange,
            routing_key=entry.routing_key,
            redelivered=entry.redelivered,
            crashes=entry.crashes,
        )

    def ack(self, delivery: Delivery) -> None:
        with self._store.lock:
            if self._store.leased.pop(delivery.tag, None) is not None:
                self._acked += 1

    def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        store = self._store
        with store.lock:
            lease = store.leased.pop(delivery.tag, None)
            self._rejected += 1
            if lease is not None and requeue:
                lease.entry.redelivered = True
                self._put(lease.entry, eta=None)
                store.lock.notify_all()

    def extend(self, deliveries: Sequence[Delivery], *, seconds: float) -> None:
        store = self._store
        with store.lock:
            until = self.clock.time() + seconds
            for delivery in deliveries:
                lease = store.leased.get(delivery.tag)
                if lease is not None:
                    lease.expires_at = until

    def recover(
        self,
        consumer_id: str,
        *,
        running: Collection[str] = (),
        discard: Collection[str] = (),
    ) -> int:
        store = self._store
        with store.lock:
            tags = [t for t, lease in store.leased.items() if lease.owner == consumer_id]
            for tag in tags:
                entry = store.leased.pop(tag).entry
                if tag in discard:
                    continue
                entry.redelivered = True
                if tag in running:
                    entry.crashes += 1
                self._put(entry, eta=None)
            store.consumers.pop(consumer_id, None)
            store.lock.notify_all()
            return len(tags) - len([t for t in tags if t in discard])

    def heartbeat(
        self,
        identity: Mapping[str, str | int],
        *,
        held: int,
        running: Sequence[str],
        register: bool = False,
    ) -> bool:
        store = self._store
        now = self.clock.time()
        with store.lock:
            record = store.consumers.get(self.consumer_id)
            if record is None and not register:
                return False
            started = now if record is None or register else record.started
            fields = identity if register or record is None else {}
            store.consumers[self.consumer_id] = ConsumerRecord(
                consumer_id=self.consumer_id,
                worker=str(fields.get("worker", record.worker if record else "")),
                host=str(fields.get("host", record.host if record else "")),
                pid=int(fields.get("pid", record.pid if record else 0)),
                pool=str(fields.get("pool", record.pool if record else "")),
                concurrency=int(fields.get("concurrency", record.concurrency if record else 1)),
                started=started,
                heartbeat=now,
                held=held,
                running=tuple(running),
                age=0.0,
            )
            return True

    def reap(self) -> dict[str, int]:
        store = self._store
        ceiling = self.clock.time() - self.lost_after
        with store.lock:
            silent = [r for r in store.consumers.values() if r.heartbeat < ceiling]
            return {r.consumer_id: self.recover(r.consumer_id, running=r.running) for r in silent}

    def consumers(self) -> list[ConsumerRecord]:
        now = self.clock.time()
        with self._store.lock:
            records = list(self._store.consumers.values())
        return [replace(r, age=max(0.0, now - r.heartbeat)) for r in records]

    def withdraw(self, *, hand_off: bool = False) -> None:
        with self._store.lock:
            self._store.consumers.pop(self.consumer_id, None)

    def restore_expired(self) -> int:
        store = self._store
        with store.lock:
            before = len(store.leased)
            self._promote(self.clock.time())
            restored = before - len(store.leased)
            if restored:
                store.lock.notify_all()
            return restored

    def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        store = self._store
        with store.lock:
            store.leased.pop(delivery.tag, None)
            dead_id = uuid.uuid4().hex
            now = self.clock.time()
            limits = self.dead_letter_limits
            message, body_size = limits.trim(delivery.message)
            store.dead[dead_id] = DeadLetter(
                id=dead_id,
                queue=delivery.queue,
                reason=reason,
                message=message,
                failed_at=datetime.fromtimestamp(now, UTC),
                body_size=body_size,
            )
            cutoff = limits.cutoff(now)
            for old_id, letter in list(store.dead.items()):
                if cutoff is not None and letter.failed_at.timestamp() < cutoff:
                    del store.dead[old_id]
            while limits.max_count is not None and len(store.dead) > limits.max_count:
                del store.dead[next(iter(store.dead))]
            self._dead_lettered += 1

    def list_dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        with self._store.lock:
            return list(self._store.dead.values())[:limit]

    def replay_dead_letter(self, dead_letter_id: str) -> bool:
        with self._store.lock:
            dead = self._store.dead.get(dead_letter_id)
            if dead is not None and dead.body_size is not None:
                raise BrokerError(
                    f"dead letter {dead_letter_id} cannot be replayed: only the first "
                    f"{len(dead.message.body)} of its {dead.body_size} bytes were kept"
                )
            self._store.dead.pop(dead_letter_id, None)
        if dead is None:
            return False
        self.publish(dead.message, queue=dead.queue)
        return True

    def purge_dead_letters(self) -> int:
        with self._store.lock:
            count = len(self._store.dead)
            self._store.dead.clear()
            return count

    def size(self, queue: str) -> int:
        store = self._store
        with store.lock:
            delayed = sum(1 for _, _, entry in store.delayed if entry.queue == queue)
            return len(store.ready.get(queue, ())) + delayed

    def purge(self, queue: str) -> int:
        store = self._store
        with store.lock:
            count = len(store.ready.pop(queue, ()))
            kept = [item for item in store.delayed if item[2].queue != queue]
            count += len(store.delayed) - len(kept)
            heapq.heapify(kept)
            store.delayed = kept
            return count

    def leased_count(self) -> int:
        """How many messages are leased right now (tests)."""
        with self._store.lock:
            return len(self._store.leased)

    def reserve_rate_slot(self, key: str, *, interval: float) -> float:
        store = self._store
        with store.lock:
            now = self.clock.time()
            previous = store.rate_slots.get(key)
            slot = now if previous is None else max(now, previous + interval)
            store.rate_slots[key] = slot
            return slot
