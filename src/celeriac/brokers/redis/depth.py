"""What waits in the Redis broker's queues, for monitors: read-only, two round trips.

- ready: the lengths of a queue's priority lists;
- delayed: the size of its delayed set (ETA and countdown messages);
- held: the leases in the held hashes of the consumers with a presence record (a stock
  Celery consumer's unacked messages are not counted: kombu files them by tag only);
- oldest age: how long the most overdue message of the delayed set has waited past its
  due time. A message published without an ETA carries no timestamp in Celery's wire
  format, so the lists cannot say how long their messages have waited.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac.brokers.base import QueueDepth

if TYPE_CHECKING:
    from collections.abc import Sequence

    import redis

    from celeriac.brokers.redis.keys import Keys
    from celeriac.connections.redis import RedisClient

__all__ = ["count_dead_letters", "read_depths"]


def read_depths(client: RedisClient, keys: Keys, queues: Sequence[str]) -> dict[str, QueueDepth]:
    """Ready, delayed and held messages of each of `queues`, and the oldest overdue age."""
    names = list(dict.fromkeys(queues))

    def read(redis_client: redis.Redis) -> Any:
        consumers: Any = redis_client.zrange(keys.presence, 0, -1)
        with redis_client.pipeline(transaction=False) as pipe:
            pipe.time()
            for queue in names:
                for key in keys.step_keys(queue):
                    pipe.llen(key)
                delayed = keys.delayed(queue)
                pipe.zcard(delayed)
                pipe.zrange(delayed, 0, 0, withscores=True)
            for member in consumers:
                pipe.hvals(keys.held_of(member.decode()))
            return pipe.execute()

    replies = client.run("read queue depths", read)
    seconds, micros = replies[0]
    now = float(seconds) + float(micros) / 1e6
    steps = len(keys.steps)
    position = 1
    counts: dict[str, tuple[int, int, float | None]] = {}
    for queue in names:
        ready = sum(int(n) for n in replies[position : position + steps])
        delayed = int(replies[position + steps])
        first = replies[position + steps + 1]
        position += steps + 2
        # None when nothing is overdue yet: an ETA still ahead has not waited at all.
        oldest = now - float(first[0][1]) if first and now > float(first[0][1]) else None
        counts[queue] = (ready, delayed, oldest)
    held: dict[str, int] = dict.fromkeys(names, 0)
    for records in replies[position:]:
        for record in records:
            queue = record.decode().partition("|")[2]
            if queue in held:
                held[queue] += 1
    return {
        queue: QueueDepth(ready=ready, delayed=delayed, held=held[queue], oldest_age=oldest)
        for queue, (ready, delayed, oldest) in counts.items()
    }


def count_dead_letters(client: RedisClient, keys: Keys) -> int:
    """The size of the dead-letter index."""
    return int(
        client.run("count dead letters", lambda redis_client: redis_client.zcard(keys.dead_index))
    )
