"""The Redis broker's dead letters: a hash of JSON records and an index by time.

A record keeps the envelope exactly as it was leased (as text, or in base64 when it is
not UTF-8), the queue, exchange, routing key, tag, reason and time. A dead-lettered
message leaves its lease and enters the store in one MULTI; a replay puts it back on
its list and removes the record in one script (`replay.lua`).
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, final

import orjson

from celeriac._time import UTC
from celeriac.brokers.base import DeadLetter, clamp_priority
from celeriac.brokers.dead_letter_limits import DROPPED_HEADERS, DeadLetterLimits
from celeriac.brokers.redis.envelope import (
    Handle,
    encode_envelope,
    held_of,
    read_delivery,
    without_redelivered,
)
from celeriac.exceptions import BrokerError, PublishError

if TYPE_CHECKING:
    import redis

    from celeriac._time import Clock
    from celeriac.brokers.base import Delivery
    from celeriac.brokers.redis.keys import Keys
    from celeriac.connections.redis import RedisClient

__all__ = ["DeadLetters"]

logger = logging.getLogger(__name__)

# Room for the headers beside a kept body prefix. Past it (headers the worker refused
# as too large), header values over HEADER_VALUE_MAX bytes are dropped and named under
# DROPPED_HEADERS.
HEADER_ALLOWANCE = 64 * 1024
HEADER_VALUE_MAX = 1024


def _small_headers(headers: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in headers.items():
        try:
            small = len(orjson.dumps(value)) <= HEADER_VALUE_MAX
        except TypeError:
            small = False
        if small:
            kept[name] = value
        else:
            dropped.append(str(name))
    return kept, dropped


@final
class DeadLetters:
    """The dead-letter store of one broker (its client, keys and clock)."""

    def __init__(
        self,
        client: RedisClient,
        keys: Keys,
        *,
        clock: Clock,
        limits: DeadLetterLimits | None = None,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._clock = clock
        self._limits = limits or DeadLetterLimits()

    def add(self, delivery: Delivery, *, reason: str) -> None:
        """`Broker.dead_letter`: move a leased message into the store."""
        keys = self._keys
        handle = delivery.handle
        raw = handle.envelope if isinstance(handle, Handle) else b""
        dead_id = uuid.uuid4().hex
        failed_at = self._clock.time()
        record: dict[str, Any] = {
            "id": dead_id,
            "queue": delivery.queue,
            "reason": reason,
            "failed_at": failed_at,
            "exchange": delivery.exchange,
            "routing_key": delivery.routing_key,
            "tag": delivery.tag,
        }
        raw, body_size = self._trimmed(delivery, raw)
        if body_size is not None:
            record["body_size"] = body_size
        try:
            record["envelope"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            record["envelope_base64"] = base64.b64encode(raw).decode("ascii")
        data = json.dumps(record)
        held = held_of(delivery, keys.held)

        def move(client: redis.Redis) -> None:
            # One MULTI: the message leaves its lease and enters the store together.
            with client.pipeline(transaction=True) as pipe:
                pipe.zrem(keys.index, delivery.tag)
                pipe.hdel(keys.unacked, delivery.tag)
                pipe.hdel(held, delivery.tag)
                pipe.hdel(keys.crashes, delivery.tag)
                pipe.hset(keys.dead, dead_id, data)
                pipe.zadd(keys.dead_index, {dead_id: failed_at})
                pipe.execute()

        self._redis.run(f"dead-letter {delivery.tag}", move)
        logger.warning(
            "dead-lettered message %s from queue %s: %s", delivery.tag, delivery.queue, reason
        )
        self._prune(failed_at)

    def _trimmed(self, delivery: Delivery, raw: bytes) -> tuple[bytes, int | None]:
        """The envelope to keep, and the body's full size when only a prefix is kept.

        A body over the limit is cut to it; headers larger than `HEADER_ALLOWANCE` in
        all lose their values over `HEADER_VALUE_MAX` (their names are listed under
        `DROPPED_HEADERS`, so the task name and id survive)."""
        limits = self._limits
        original = delivery.message
        if len(original.body) <= limits.body_max and len(raw) <= (
            limits.body_max + HEADER_ALLOWANCE
        ):
            return raw, None
        message, size = limits.trim(original)
        if len(raw) - len(original.body) > HEADER_ALLOWANCE:
            kept, dropped = _small_headers(message.headers)
            if dropped:
                kept[DROPPED_HEADERS] = dropped
            message = replace(message, headers=kept)
        try:
            envelope = encode_envelope(
                message,
                exchange=delivery.exchange,
                routing_key=delivery.routing_key,
                priority=clamp_priority(message.priority),
                tag=delivery.tag,
            )
        except PublishError:
            # Headers no envelope can carry: keep a prefix of the raw bytes.
            return raw[: limits.body_max], len(raw)
        return envelope, size

    def _prune(self, now: float) -> None:
        """Drop dead letters past `dead_letter_ttl` and past `dead_letter_max`."""
        keys, limits = self._keys, self._limits
        cutoff = limits.cutoff(now)

        def prune(client: redis.Redis) -> int:
            doomed: list[Any] = []
            if cutoff is not None:
                doomed += client.zrangebyscore(keys.dead_index, "-inf", f"({cutoff}", 0, 1000)
            if limits.max_count is not None:
                over = client.zcard(keys.dead_index) - limits.max_count
                if over > 0:
                    doomed += client.zrange(keys.dead_index, 0, min(over, 1000) - 1)
            if not doomed:
                return 0
            with client.pipeline(transaction=True) as pipe:
                pipe.hdel(keys.dead, *doomed)
                pipe.zrem(keys.dead_index, *doomed)
                pipe.execute()
            return len(set(doomed))

        try:
            dropped = self._redis.run("prune dead letters", prune)
        except Exception as exc:  # isolation boundary: the next dead letter prunes again
            logger.warning("cannot prune dead letters now: %s", exc)
            return
        if dropped:
            logger.info("dropped %d dead letter(s) past their age or count limit", dropped)

    def _dead_letter_of(self, dead_id: str, data: bytes) -> DeadLetter | None:
        try:
            record = json.loads(data)
            if "envelope" in record:
                raw = record["envelope"].encode("utf-8")
            else:
                raw = base64.b64decode(record["envelope_base64"])
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.error("unreadable dead letter %s", dead_id)
            return None
        queue, tag = record.get("queue", ""), record.get("tag", "")
        delivery = read_delivery(raw, queue, tag, 0, self._keys.held)
        return DeadLetter(
            id=dead_id,
            queue=str(record.get("queue", "")),
            reason=str(record.get("reason", "")),
            message=delivery.message,
            failed_at=datetime.fromtimestamp(float(record.get("failed_at", 0)), UTC),
            body_size=int(record["body_size"]) if "body_size" in record else None,
        )

    def list(self, *, limit: int = 100) -> list[DeadLetter]:
        """`Broker.list_dead_letters`: the oldest `limit` dead letters."""
        if limit <= 0:
            return []
        keys = self._keys
        ids = self._redis.run(
            "list dead letters", lambda client: client.zrange(keys.dead_index, 0, limit - 1)
        )
        if not ids:
            return []
        records = self._redis.run("read dead letters", lambda client: client.hmget(keys.dead, ids))
        letters = []
        for dead_id, data in zip(ids, records, strict=True):
            if data is not None:
                letter = self._dead_letter_of(dead_id.decode(), data)
                if letter is not None:
                    letters.append(letter)
        return letters

    def replay(self, dead_letter_id: str) -> bool:
        """`Broker.replay_dead_letter`: put a dead letter back on its queue."""
        keys = self._keys
        data = self._redis.run(
            f"read dead letter {dead_letter_id}",
            lambda client: client.hget(keys.dead, dead_letter_id),
        )
        if data is None:
            return False
        letter = self._dead_letter_of(dead_letter_id, data)
        if letter is None:
            return False
        if DROPPED_HEADERS in letter.message.headers:
            raise BrokerError(
                f"dead letter {dead_letter_id} cannot be replayed: its headers "
                f"{', '.join(map(str, letter.message.headers[DROPPED_HEADERS]))} were dropped"
            )
        if letter.body_size is not None:
            raise BrokerError(
                f"dead letter {dead_letter_id} cannot be replayed: only the first "
                f"{len(letter.message.body)} of its {letter.body_size} bytes were kept"
            )
        record = json.loads(data)
        message = without_redelivered(letter.message)
        priority = clamp_priority(message.priority)
        envelope = encode_envelope(
            message,
            exchange=str(record.get("exchange") or ""),
            routing_key=str(record.get("routing_key") or letter.queue),
            priority=priority,
        )
        script = self._redis.script("replay")
        script_keys = [keys.dead, keys.dead_index, keys.list_key(letter.queue, priority)]
        replayed = self._redis.run(
            f"replay dead letter {dead_letter_id}",
            lambda client: script(keys=script_keys, args=[dead_letter_id, envelope], client=client),
        )
        return bool(replayed)

    def purge(self) -> int:
        """`Broker.purge_dead_letters`: delete every dead letter; how many there were."""
        keys = self._keys

        def purge(client: redis.Redis) -> Any:
            with client.pipeline(transaction=True) as pipe:
                pipe.hlen(keys.dead)
                pipe.delete(keys.dead, keys.dead_index)
                return pipe.execute()

        return int(self._redis.run("purge dead letters", purge)[0])
