"""Redis broker (`redis://`, `rediss://`, `redis+socket://`), wire-compatible with kombu 5.

Queues, envelopes, bindings and the ack-emulation structures are exactly kombu's, so a
stock Celery producer's messages reach our workers, ours reach stock workers, and either
side can restore the other's in-flight messages. On top of that layout celeriac closes
the gaps Celery users hit on Redis:

- a batch is popped and leased in one Lua script (`fetch.lua`): no instant in
  which a message exists only in a process's memory (kombu's BRPOP-then-ZADD window);
- an idle consumer waits on Redis client-side-caching invalidations (CLIENT TRACKING in
  BCAST mode) for the keys it consumes, so it wakes within a millisecond of an LPUSH by
  any producer, stock ones included, without polling;
- leases are renewed (`extend`) while a task runs, so a long task is never re-delivered
  by the visibility-timeout sweep;
- ETA/countdown messages wait in Redis sorted sets and are promoted, atomically, by any
  live consumer, never held in a worker's memory;
- dead letters, crash counts per message and a cluster-wide rate limiter.

`broker` holds `RedisBroker`; one module per idea sits beside it, with the Lua scripts.
Redis >= 6.2 is required (RPOP with a count, ZADD LT), as for kombu 5.7. Redis Cluster
is not supported (nor by kombu).
"""

from celeriac.brokers.redis.broker import RedisBroker as RedisBroker

__all__ = ["RedisBroker"]
