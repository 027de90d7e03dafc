"""Putting leased messages back on their lists: kombu's visibility sweep, `recover`, and
the requeue of a consumer's own deliveries.

Every path ends in one script (`restore.lua`) that, per message, removes the lease and
pushes the envelope, flagged redelivered as kombu flags it, back to its list (or drops
an index entry whose message is gone), so a crash between the two cannot happen.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import TYPE_CHECKING, Any, final

from celeriac.brokers.base import clamp_priority
from celeriac.brokers.redis.envelope import Handle, read_unacked_entry, redelivered_envelope

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    import redis

    from celeriac._time import Clock
    from celeriac.brokers.base import Delivery
    from celeriac.brokers.redis.keys import Keys
    from celeriac.connections.redis import RedisClient

__all__ = ["Recovery"]

logger = logging.getLogger(__name__)

# Tags per restore-script call.
RESTORE_CHUNK = 200

# exchange -> its bindings (routing key, pattern, queue), read once per sweep or recover.
_Tables = dict[str, list[tuple[str, str, str]]]


@final
class Recovery:
    """Restores the leases of one broker.

    Args:
        client: The broker's Redis client.
        keys: The broker's key layout.
        clock: The broker's clock.
        visibility_timeout: How long a lease lasts unrenewed.
        mutex_expire: How long the sweep lock may be held (seconds).
        restore_limit: Lapsed leases one sweep restores at most.
    """

    def __init__(
        self,
        client: RedisClient,
        keys: Keys,
        *,
        clock: Clock,
        visibility_timeout: float,
        mutex_expire: float,
        restore_limit: int,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._clock = clock
        self._visibility_timeout = visibility_timeout
        self._mutex_expire = mutex_expire
        self._restore_limit = restore_limit

    def restore_own(self, deliveries: Sequence[Delivery], *, action: str) -> int:
        """Put this broker's `deliveries` back on their lists, flagged redelivered: at
        the head (`action` "R", consumed next) or at the tail ("L")."""
        groups: list[str | bytes] = []
        for delivery in deliveries:
            handle = delivery.handle
            if not isinstance(handle, Handle):
                logger.error("cannot requeue %s: not a delivery of this broker", delivery.tag)
                continue
            # An envelope that is not JSON goes back unchanged: requeue never drops.
            envelope = redelivered_envelope(handle.envelope) or handle.envelope
            priority = clamp_priority(delivery.message.priority)
            groups += [
                delivery.tag,
                handle.held_key,
                action,
                self._keys.list_key(delivery.queue, priority),
                envelope,
                "0",
            ]
        restored, _ = self._restore_groups(groups, ceiling=0.0, what="requeue")
        return restored

    def _restore_groups(
        self, groups: list[str | bytes], *, ceiling: float, what: str
    ) -> tuple[int, int]:
        restored = dropped = 0
        script = self._redis.script("restore")
        keys = [self._keys.unacked, self._keys.index, self._keys.crashes]
        step = 6 * RESTORE_CHUNK
        for start in range(0, len(groups), step):
            chunk = groups[start : start + step]

            def restore(client: redis.Redis, chunk: list[str | bytes] = chunk) -> Any:
                return script(keys=keys, args=[f"{ceiling:.6f}", *chunk], client=client)

            done = self._redis.run(what, restore)
            restored += int(done[0])
            dropped += int(done[1])
        return restored, dropped

    def _destination(self, exchange: str, routing_key: str, tables: _Tables) -> str:
        """The queue a restored message goes to, found the way kombu's _lookup does."""
        if not exchange:
            return routing_key
        table = tables.get(exchange)
        if table is None:
            members = self._redis.run(
                f"read bindings of {exchange}",
                lambda client: client.smembers(self._keys.binding(exchange)),
            )
            table = []
            for member in members:
                parts = member.decode().split(self._keys.sep)
                if len(parts) == 3:
                    table.append((parts[0], parts[1], parts[2]))
            tables[exchange] = table
        matches = sorted(
            queue
            for bound_key, pattern, queue in table
            if (re.match(pattern, routing_key) if pattern else bound_key == routing_key)
        )
        if not matches:
            # kombu would drop it (no binding); keeping it in the routing key's queue
            # loses nothing, and that is where Celery's direct routing sends it.
            logger.warning(
                "no queue bound to exchange %r for routing key %r: restoring to queue %r",
                exchange,
                routing_key,
                routing_key,
            )
            return routing_key
        return routing_key if routing_key in matches else matches[0]

    def _prepare_entry(
        self, entry: bytes, queue: str | None, tables: _Tables
    ) -> tuple[str, str] | None:
        """Destination list and redelivered envelope for an `unacked` entry."""
        read = read_unacked_entry(entry)
        if read is None:
            return None
        exchange, routing_key, level, envelope = read
        if queue is None:
            queue = self._destination(exchange, routing_key, tables)
        return self._keys.list_key(queue, level), envelope

    def recover(self, consumer_id: str, running: Collection[str], discard: Collection[str]) -> int:
        """`Broker.recover`: put every lease `consumer_id` holds back on its list (the
        tags in `running` counted as crashes, those in `discard` dropped)."""
        held_key = self._keys.held_of(consumer_id)
        records: dict[bytes, bytes] = self._redis.run(
            f"read leases of {consumer_id}", lambda client: client.hgetall(held_key)
        )
        if not records:
            return 0
        tags = [tag.decode() for tag in records]
        entries = self._redis.run(
            f"read leases of {consumer_id}",
            lambda client: client.hmget(self._keys.unacked, tags),
        )
        running_set, discard_set = set(running), set(discard)
        tables: _Tables = {}
        groups: list[str | bytes] = []
        for tag, record, entry in zip(tags, records.values(), entries, strict=True):
            queue = record.decode().partition("|")[2] or None
            prepared = None
            if tag not in discard_set and entry is not None:
                prepared = self._prepare_entry(entry, queue, tables)
                if prepared is None:
                    logger.error("cannot restore unreadable unacked entry %s; left in place", tag)
                    continue
            if prepared is None:
                groups += [tag, held_key, "D", "", "", "0"]
            else:
                crashed = "1" if tag in running_set else "0"
                groups += [tag, held_key, "R", prepared[0], prepared[1], crashed]
        restored, _ = self._restore_groups(groups, ceiling=0.0, what=f"recover {consumer_id}")
        return restored

    def _running_tags(self) -> set[str]:
        """Every tag a presence record lists as running (read only when leases lapsed)."""
        keys = self._keys

        def read(client: redis.Redis) -> Any:
            members: Any = client.zrange(keys.presence, 0, -1)
            with client.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.hget(keys.consumer_of(member.decode()), "running")
                return pipe.execute()

        fields = self._redis.run("read running tags", read)
        return {tag for field in fields if field for tag in field.decode().split()}

    def restore_expired(self) -> int:
        """kombu's visibility-timeout sweep: return lapsed leases, consumed next."""
        keys = self._keys
        token = uuid.uuid4().hex
        acquired = self._redis.run(
            "lock the unacked sweep",
            lambda client: client.set(
                keys.mutex, token, nx=True, px=int(self._mutex_expire * 1000)
            ),
        )
        if not acquired:
            return 0
        try:
            ceiling = self._clock.time() - self._visibility_timeout
            lapsed = self._redis.run(
                "find lapsed leases",
                lambda client: client.zrangebyscore(
                    keys.index, "-inf", ceiling, start=0, num=self._restore_limit
                ),
            )
            if not lapsed:
                return 0
            tags = [tag.decode() for tag in lapsed]
            entries = self._redis.run(
                "read lapsed leases", lambda client: client.hmget(keys.unacked, tags)
            )
            running = self._running_tags()
            tables: _Tables = {}
            groups: list[str | bytes] = []
            for tag, entry in zip(tags, entries, strict=True):
                if entry is None:
                    # An index entry without its message: kombu removes those too.
                    groups += [tag, "", "D", "", "", "0"]
                    continue
                prepared = self._prepare_entry(entry, None, tables)
                if prepared is None:
                    logger.error("cannot restore unreadable unacked entry %s; left in place", tag)
                    continue
                # A lease lapses only when its holder stopped renewing it (dead, or
                # stalled past the visibility timeout): the last resort counts a crash
                # against what a presence record lists as running.
                crashed = "1" if tag in running else "0"
                groups += [tag, "", "R", prepared[0], prepared[1], crashed]
            restored, _ = self._restore_groups(groups, ceiling=ceiling, what="restore leases")
            if restored:
                logger.info("restored %d message(s) whose lease lapsed", restored)
            return restored
        finally:
            unlock = self._redis.script("unlock")
            self._redis.run(
                "unlock the unacked sweep",
                lambda client: unlock(keys=[keys.mutex], args=[token], client=client),
            )
