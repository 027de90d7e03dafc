"""Presence on Redis: heartbeats, reaping silent consumers, and ETA hand-off.

Each consuming process keeps a record (`_celeriac.consumer.<id>`) and a score in
`_celeriac.presence`, both stamped with Redis's `TIME` (`heartbeat.lua`), so ages are
measured on one clock whatever the clients' clocks say. A consumer silent for longer than
`lost_after` is claimed by one reaper (`claim.lua`), whose `Recovery.recover` returns every
message it held, per tag and atomically (two reapers return each message once), counting a
crash against the tags its last heartbeat listed as running; then its record goes
(`forget.lua`).

The presence records also decide where an ETA message waits (`publish_eta.lua`): in the
delayed set while a celeriac consumer is alive to promote it, otherwise on its list with
its `eta` header, as kombu publishes it; and `handoff.lua` moves the delayed sets to the
lists once no celeriac consumer is left.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any, final

from celeriac.brokers.base import ConsumerRecord

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import redis

    from celeriac.brokers.redis.keys import Keys
    from celeriac.brokers.redis.recovery import Recovery
    from celeriac.connections.redis import RedisClient

__all__ = ["Presence"]

logger = logging.getLogger(__name__)

# Silent consumers one reap claims at most (the next reap continues).
REAP_BATCH = 100
# Delayed messages one hand-off call moves at most (the caller repeats).
HANDOFF_BUDGET = 1000


def _text(value: bytes | None, default: str = "") -> str:
    return value.decode() if value is not None else default


def _number(value: bytes | None) -> float:
    try:
        return float(value) if value is not None else 0.0
    except ValueError:
        return 0.0


@final
class Presence:
    """The presence records of one broker.

    Args:
        client: The broker's Redis client.
        keys: The broker's key layout.
        recovery: Returns a reaped consumer's messages.
        consumer_id: This broker's consumer.
        lost_after: Seconds of silence after which a consumer is presumed dead.
        record_ttl: How long a record outlives its last heartbeat (seconds).
    """

    def __init__(
        self,
        client: RedisClient,
        keys: Keys,
        recovery: Recovery,
        *,
        consumer_id: str,
        lost_after: float,
        record_ttl: int,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._recovery = recovery
        self._consumer_id = consumer_id
        self._lost_after = lost_after
        self._record_ttl = record_ttl

    def heartbeat(
        self,
        identity: Mapping[str, str | int],
        *,
        held: int,
        running: Sequence[str],
        register: bool,
    ) -> bool:
        args: list[Any] = [
            self._consumer_id,
            "1" if register else "0",
            self._record_ttl,
            held,
            " ".join(running),
        ]
        if register:
            for field, value in identity.items():
                args += [field, value]
        keys = [self._keys.presence, self._keys.consumer]
        script = self._redis.script("heartbeat")
        done = self._redis.run(
            f"heartbeat of {self._consumer_id}",
            lambda client: script(keys=keys, args=args, client=client),
        )
        return bool(done)

    def reap(self) -> dict[str, int]:
        token = uuid.uuid4().hex
        keys = self._keys
        script = self._redis.script("claim")
        args = [self._lost_after, keys.consumer_prefix(), REAP_BATCH, token, self._record_ttl]
        claimed = self._redis.run(
            "claim silent consumers",
            lambda client: script(keys=[keys.presence], args=args, client=client),
        )
        reaped: dict[str, int] = {}
        for i in range(0, len(claimed), 2):
            consumer_id = claimed[i].decode()
            running = claimed[i + 1].decode().split()
            returned = self._recovery.recover(consumer_id, running, ())
            self.forget(consumer_id, token=token)
            reaped[consumer_id] = returned
            logger.warning(
                "Consumer %s was silent for more than %.0f s: presumed dead; returned the "
                "%d message(s) it held (%d running, counted as crashes)",
                consumer_id,
                self._lost_after,
                returned,
                len(running),
            )
        return reaped

    def forget(self, consumer_id: str, *, token: str = "") -> None:
        """Remove `consumer_id`'s record (with `token`: only if that reap still owns it)."""
        keys = [self._keys.presence, self._keys.consumer_of(consumer_id)]
        script = self._redis.script("forget")
        self._redis.run(
            f"forget consumer {consumer_id}",
            lambda client: script(keys=keys, args=[consumer_id, token], client=client),
        )

    def consumers(self) -> list[ConsumerRecord]:
        keys = self._keys

        def read(client: redis.Redis) -> Any:
            members: Any = client.zrange(keys.presence, 0, -1, withscores=True)
            with client.pipeline(transaction=False) as pipe:
                pipe.time()
                for member, _ in members:
                    pipe.hgetall(keys.consumer_of(member.decode()))
                return members, pipe.execute()

        members: list[tuple[bytes, float]]
        members, replies = self._redis.run("read presence records", read)
        seconds, micros = replies[0]
        now = seconds + micros / 1e6
        records = []
        for (member, score), fields in zip(members, replies[1:], strict=True):
            consumer_id = member.decode()
            worker, _, pid = consumer_id.rpartition(":")
            records.append(
                ConsumerRecord(
                    consumer_id=consumer_id,
                    worker=_text(fields.get(b"worker"), worker),
                    host=_text(fields.get(b"host")),
                    pid=int(_number(fields.get(b"pid")) or (int(pid) if pid.isdigit() else 0)),
                    pool=_text(fields.get(b"pool")),
                    concurrency=int(_number(fields.get(b"concurrency"))),
                    started=_number(fields.get(b"started")),
                    heartbeat=float(score),
                    held=int(_number(fields.get(b"held"))),
                    running=tuple(_text(fields.get(b"running")).split()),
                    age=max(0.0, now - float(score)),
                )
            )
        return records

    def publish_eta_command(
        self, *, queue: str, due: float, envelope: bytes, list_key: str
    ) -> tuple[Any, ...]:
        """The command that runs `publish_eta.lua` for one message, to queue with the
        other publish commands. EVAL with the source, not EVALSHA: it shares a raw
        MULTI with them, where a NOSCRIPT reply could not be retried; Redis caches the
        compiled script by its digest either way."""
        keys = self._keys
        source = self._redis.script("publish_eta").script
        return (
            "EVAL",
            source,
            4,
            keys.presence,
            keys.delayed(queue),
            keys.delayed_index,
            list_key,
            self._lost_after,
            f"{due:.6f}",
            envelope,
            queue,
        )

    def hand_off(self) -> int:
        """Move the delayed sets to the lists if no celeriac consumer is alive; return
        how many messages moved (0 when one is alive)."""
        keys = self._keys
        script = self._redis.script("handoff")
        args = [
            self._lost_after,
            keys.prefix,
            keys.sep,
            keys.steps_text,
            HANDOFF_BUDGET,
            keys.delayed_prefix(),
        ]
        total = 0
        while True:
            moved = int(
                self._redis.run(
                    "hand the delayed sets to the lists",
                    lambda client: script(
                        keys=[keys.presence, keys.delayed_index], args=args, client=client
                    ),
                )
            )
            if moved <= 0:
                break
            total += moved
        if total:
            logger.warning(
                "No celeriac consumer is alive: handed %d delayed (ETA) message(s) to their "
                "queues, where stock Celery workers run them on time",
                total,
            )
        return total
