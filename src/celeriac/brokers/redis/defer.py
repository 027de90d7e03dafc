"""Deferral: a leased message handed back to wait in its queue's delayed set.

One script (`defer.lua`) ends the lease and adds the delayed copy (or, when the ETA has
passed meanwhile, pushes it to its list) in one step; a batch pipelines the scripts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, final

from celeriac.brokers.base import clamp_priority
from celeriac.brokers.redis.envelope import encode_envelope, held_of, without_redelivered
from celeriac.exceptions import BrokerError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    import redis

    from celeriac._time import Clock
    from celeriac.brokers.base import Deferral, Delivery
    from celeriac.brokers.redis.keys import Keys
    from celeriac.connections.redis import RedisClient
    from celeriac.protocol.message import Message

__all__ = ["Deferrals"]

logger = logging.getLogger(__name__)


@final
class Deferrals:
    """`Broker.defer` and `defer_many` for one broker (its client, keys and clock)."""

    def __init__(self, client: RedisClient, keys: Keys, *, clock: Clock) -> None:
        self._redis = client
        self._keys = keys
        self._clock = clock

    def defer(self, delivery: Delivery, *, eta: datetime, message: Message | None) -> None:
        """Hand a leased message back to wait in the delayed set until `eta`, atomically.

        One script (`defer.lua`, one round trip) ends the lease and adds the
        delayed copy together, so a crash can neither lose nor duplicate it; if the lease
        lapsed and went back to the queue meanwhile, the message is left to whoever takes
        it next. The delivery tag is kept (its crash count stays with it); the
        redelivered flag is not, since waiting for an ETA is no redelivery.
        """
        keys, args = self._defer_call(delivery, eta=eta, message=message)
        script = self._redis.script("defer")
        moved = self._redis.run(
            f"defer {delivery.tag} to {eta.isoformat()}",
            lambda client: script(keys=keys, args=args, client=client),
        )
        if not moved:
            self._log_not_deferred(delivery)

    def defer_many(self, deferrals: Sequence[Deferral]) -> None:
        """`defer` each (two or more), the scripts pipelined: one round trip for the batch (two when
        Redis lost the script and redis-py loads it again). Each script stands alone, so
        a pipeline sent again after a lost connection moves nothing twice.

        Raises:
            BrokerError: Redis refused a script (the first error is named); the other
                scripts of the batch ran, and a message they moved is no longer leased.
        """
        calls = [
            self._defer_call(item.delivery, eta=item.eta, message=item.message)
            for item in deferrals
        ]
        script = self._redis.script("defer")

        def run(client: redis.Redis) -> list[Any]:
            with client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    script(keys=keys, args=args, client=pipe)
                return pipe.execute(raise_on_error=False)

        replies = self._redis.run(f"defer {len(calls)} messages", run)
        errors = [reply for reply in replies if isinstance(reply, Exception)]
        for item, reply in zip(deferrals, replies, strict=True):
            if not reply and not isinstance(reply, Exception):
                self._log_not_deferred(item.delivery)
        if errors:
            raise BrokerError(
                f"Redis refused to defer {len(errors)} of {len(calls)} messages: {errors[0]}"
            )

    def _defer_call(
        self, delivery: Delivery, *, eta: datetime, message: Message | None
    ) -> tuple[list[str], list[str | bytes]]:
        """Keys and arguments of `defer.lua` for one message."""
        source = without_redelivered(message or delivery.message)
        level = clamp_priority(source.priority)
        envelope = encode_envelope(
            source,
            exchange=delivery.exchange,
            routing_key=delivery.routing_key or delivery.queue,
            priority=level,
            tag=delivery.tag,
        )
        due = eta.timestamp()
        queue = delivery.queue
        k = self._keys
        if due > self._clock.time():
            destination, mode = k.delayed(queue), "Z"
        else:
            destination, mode = k.list_key(queue, level), "L"
        keys = [k.unacked, k.index, held_of(delivery, k.held), destination, k.delayed_index]
        return keys, [delivery.tag, envelope, f"{due:.6f}", queue, mode]

    @staticmethod
    def _log_not_deferred(delivery: Delivery) -> None:
        logger.info(
            "not deferring %s: its lease lapsed and it went back to queue %s",
            delivery.tag,
            delivery.queue,
        )
