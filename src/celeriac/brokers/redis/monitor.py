"""Read-only counts of the Redis broker for monitors: dead letters, overdue ETA messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

    from celeriac.brokers.redis.keys import Keys
    from celeriac.connections.redis import RedisClient

__all__ = ["count_dead_letters", "overdue_age"]


def count_dead_letters(client: RedisClient, keys: Keys) -> int:
    """The size of the dead-letter index."""
    return int(
        client.run("count dead letters", lambda redis_client: redis_client.zcard(keys.dead_index))
    )


def overdue_age(client: RedisClient, keys: Keys, queue: str) -> float | None:
    """How long the earliest message of `queue`'s delayed set has been due, by the server's
    clock; None when it is not due yet (or the set is empty).

    Any celeriac consumer's fetch moves due messages into their lists, so one that stays
    here past its time means no consumer is fetching.
    """

    def read(redis_client: redis.Redis) -> Any:
        with redis_client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.zrange(keys.delayed(queue), 0, 0, withscores=True)
            return pipe.execute()

    (seconds, micros), first = client.run(f"overdue age of {queue}", read)
    if not first:
        return None
    age = float(seconds) + float(micros) / 1e6 - float(first[0][1])
    return age if age > 0 else None
