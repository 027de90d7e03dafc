"""Redis broker (`redis://`, `rediss://`, `redis+socket://`), wire-compatible with kombu 5.

Queues, envelopes, bindings and the ack-emulation structures are exactly kombu's, so a
stock Celery producer's messages reach our workers, ours reach stock workers, and either
side can restore the other's in-flight messages. On top of that layout celeriac closes
the gaps Celery users hit on Redis:

- a batch is popped and leased in one Lua script (`redis_fetch.lua`): no instant in
  which a message exists only in a process's memory (kombu's BRPOP-then-ZADD window);
- an idle consumer waits on Redis client-side-caching invalidations (CLIENT TRACKING in
  BCAST mode) for the keys it consumes, so it wakes within a millisecond of an LPUSH by
  any producer, stock ones included, without polling;
- leases are renewed (`extend`) while a task runs, so a long task is never re-delivered
  by the visibility-timeout sweep;
- ETA/countdown messages wait in Redis sorted sets and are promoted, atomically, by any
  live consumer, never held in a worker's memory;
- dead letters, crash counts per message and a cluster-wide rate limiter.

The Lua scripts sit beside this module as `redis_*.lua`. Redis >= 6.2 is required (RPOP
with a count, ZADD LT), as for kombu 5.7. Redis Cluster is not supported (nor by kombu).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, final

import orjson
import redis.exceptions as redis_errors

from celeriac._crashpoints import armed, crash_point
from celeriac._redis import (
    RATE_PREFIX,
    RETRYABLE_ERRORS,
    KeyWatcher,
    RawCommands,
    RetryPolicy,
    call_with_retry,
    connection_pool,
    load_rate_script,
    load_script,
    reserve_rate_slot,
)
from celeriac._time import UTC
from celeriac.brokers.base import (
    INVALID_ENVELOPE,
    Broker,
    DeadLetter,
    Delivery,
    Outgoing,
    clamp_priority,
)
from celeriac.exceptions import (
    BrokerConnectionError,
    BrokerError,
    ImproperlyConfigured,
    PublishError,
    SerializationError,
)
from celeriac.protocol.message import Message
from celeriac.protocol.serializers import json_dumps, json_loads

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Sequence

    import redis

    from celeriac.brokers.base import Deferral

__all__ = ["RedisBroker"]

logger = logging.getLogger(__name__)

# -- storage layout ----------------------------------------------------------------------
# Every key below gets the `global_keyprefix` transport option prepended, as kombu does.
#
# kombu's keys (shared with stock Celery peers, written exactly as kombu writes them):
#   <queue>, <queue><sep><step>        lists of JSON envelopes; LPUSH in, RPOP out
#   _kombu.binding.<exchange>          set of "<routing_key><sep><pattern><sep><queue>"
#   _kombu.binding_permanent.<exchange>  the same members (kombu 5.7 keeps tables alive)
#   unacked                            hash: delivery tag -> [envelope, exchange, routing_key]
#   unacked_index                      zset: delivery tag -> delivery (or renewal) time
#   unacked_mutex                      string: held while one consumer sweeps lapsed leases
#
# celeriac's own keys:
#   _celeriac.delayed                  zset: queue name -> earliest due time of its ETAs
#   _celeriac.delayed.<queue>          zset: envelope -> due time (ETA/countdown messages)
#   _celeriac.held.<consumer_id>       hash: tag -> "<lease score>|<queue>" (for recover)
#   _celeriac.crashes                  hash: tag -> consumers that died running it
#   _celeriac.fetch.<consumer_id>      string: last fetch token + tags (replay after a lost reply)
#   _celeriac.dead                     hash: dead-letter id -> JSON record
#   _celeriac.dead_index               zset: dead-letter id -> time it was dead-lettered
#   _celeriac.rate.<key>               string: last reserved rate-limit slot
BINDING_PREFIX = "_kombu.binding."
BINDING_PERMANENT_PREFIX = "_kombu.binding_permanent."
DELAYED_INDEX = "_celeriac.delayed"
DELAYED_PREFIX = "_celeriac.delayed."
HELD_PREFIX = "_celeriac.held."
CRASHES = "_celeriac.crashes"
LAST_FETCH_PREFIX = "_celeriac.fetch."
DEAD = "_celeriac.dead"
DEAD_INDEX = "_celeriac.dead_index"

# kombu's defaults, which every peer must share.
DEFAULT_SEP = "\x06\x16"
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
# Largest batch one fetch leases (keeps each script call short).
MAX_BATCH = 1000
# A consumer whose fetches come back full drains its wake-up connection at least this
# often (seconds), so notifications do not pile up on it while it is busy.
DRAIN_EVERY = 0.1
# Due ETA messages one fetch promotes at most; the next fetch continues.
PROMOTE_BUDGET = 1000
# Tags per restore-script call.
RESTORE_CHUNK = 200
# Anything that can go wrong on the wake-up connection; receive falls back to polling.
_WATCH_ERRORS: tuple[type[BaseException], ...] = (
    *RETRYABLE_ERRORS,
    redis_errors.RedisError,
    OSError,
)
# Properties that belong to the Redis envelope, not to the message.
_TRANSPORT_PROPERTIES = frozenset({"delivery_info", "body_encoding", "delivery_tag"})


@final
@dataclass(frozen=True, slots=True)
class _Handle:
    """What ack/reject need beyond the tag: the envelope as stored, and whose lease."""

    envelope: bytes
    held_key: str


@final
@dataclass(frozen=True, slots=True)
class _Plan:
    """The lists one `receive` pops, priority-major, and the keys its watcher tracks."""

    queues: tuple[str, ...]
    list_keys: tuple[str, ...]
    list_queues: tuple[str, ...]
    watched: frozenset[bytes]


def _json_default(value: Any) -> Any:
    # Header values JSON cannot carry natively (datetime, Decimal, UUID, bytes) travel
    # with kombu's type tags, exactly as kombu's own encoder writes them.
    return orjson.loads(json_dumps(value))


def _flag_redelivered(envelope: dict[str, Any]) -> None:
    """Mark an envelope the way kombu marks a restored message."""
    headers = envelope.get("headers")
    properties = envelope.get("properties")
    if isinstance(headers, dict) and isinstance(properties, dict):
        info = properties.get("delivery_info")
        if isinstance(info, dict):
            headers["redelivered"] = True
            info["redelivered"] = True


class RedisBroker(Broker):
    """Redis transport with kombu's layout (see the module docstring).

    Transport options (all optional; kombu's names where kombu has the setting):
        global_keyprefix, sep, priority_steps, visibility_timeout (3600 s, as kombu:
        every peer sweeps the shared `unacked_index`, so the smallest value wins),
        unacked_key, unacked_index_key, unacked_mutex_key, unacked_mutex_expire,
        unacked_restore_limit, unacked_restore_interval (seconds between sweeps run by an
        idle `receive`), wakeup_interval (longest idle wait between fetches),
        wake_by_tracking (wait on CLIENT TRACKING invalidations; False polls),
        polling_interval (longest poll step when polling), broker_side_eta (keep ETA
        messages in Redis; False pushes them at once, as kombu does), connection_retries,
        connection_retry_backoff, connection_retry_backoff_max, and connection settings:
        socket_timeout, socket_connect_timeout, socket_keepalive, health_check_interval,
        max_connections, client_name, ssl (dict of ssl_* settings, for rediss://).
    """

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss", "redis+socket")
    supports_priority: ClassVar[bool] = True
    # Celery compat: on Redis priority 0 is served first (kombu pops step lists 0,3,6,9).
    higher_priority_first: ClassVar[bool] = False
    supports_native_delay: ClassVar[bool] = True
    supports_rate_limit: ClassVar[bool] = True
    supports_leases: ClassVar[bool] = True
    supports_recover: ClassVar[bool] = True
    # Celery compat: kombu's default; peers sharing unacked_index should agree on it.
    default_visibility_timeout: ClassVar[float] = 3600.0

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        options = self.transport_options
        self._prefix = str(options.get("global_keyprefix") or "")
        self._sep = str(options.get("sep", DEFAULT_SEP))
        steps = options.get("priority_steps", DEFAULT_PRIORITY_STEPS)
        self._steps: tuple[int, ...] = tuple(sorted(int(step) for step in steps))
        if not self._steps:
            raise ImproperlyConfigured("priority_steps must list at least one priority")
        self._steps_text = ",".join(str(step) for step in self._steps)
        prefix = self._prefix
        self._unacked = prefix + str(options.get("unacked_key", "unacked"))
        self._index = prefix + str(options.get("unacked_index_key", "unacked_index"))
        self._mutex = prefix + str(options.get("unacked_mutex_key", "unacked_mutex"))
        self._mutex_expire = float(options.get("unacked_mutex_expire", 300))
        self._restore_limit = int(options.get("unacked_restore_limit") or 1000)
        default_sweep = max(0.05, min(self.visibility_timeout / 4, 60.0))
        self._sweep_interval = float(options.get("unacked_restore_interval", default_sweep))
        self._wakeup_interval = float(options.get("wakeup_interval", 2.0))
        self._poll_max = float(options.get("polling_interval", 0.1))
        # False: ETA messages go straight to their list like kombu's (their `eta` header
        # makes the consumer wait), for fleets where no celeriac consumer promotes them.
        self._broker_side_eta = bool(options.get("broker_side_eta", True))
        self._retry_policy = RetryPolicy.from_options(options)
        self._held_key = prefix + HELD_PREFIX + self.consumer_id
        self._held_ttl = int(max(86400, 4 * self.visibility_timeout))
        self._delayed_index = prefix + DELAYED_INDEX
        self._crashes = prefix + CRASHES
        self._dead = prefix + DEAD
        self._dead_index = prefix + DEAD_INDEX
        self._lock = threading.Lock()
        self._pool: redis.ConnectionPool | None = None
        self._client: redis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._declared: set[str] = set()
        self._plans: dict[tuple[str, ...], _Plan] = {}
        self._cycle: list[str] = []
        self._watcher: KeyWatcher | None = None
        self._raw: RawCommands | None = None
        self._tracking = bool(options.get("wake_by_tracking", True))
        self._watcher_failed_at = float("-inf")
        # Whether the last fetch came back short (the lists may be empty), and when the
        # wake-up connection was last drained: see `_receive`.
        self._ran_dry = True
        self._drained_at = float("-inf")
        # The first idle receive sweeps at once, as kombu does when a consumer starts.
        self._last_sweep = float("-inf")
        # When the last fetch saw the next ETA fall due (None: nothing delayed).
        self._next_due: float | None = None

    # -- plumbing -------------------------------------------------------------------

    def _connection(self) -> redis.Redis:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                import redis as redis_module

                self._pool = connection_pool(self.url, self.transport_options)
                self._client = redis_module.Redis(connection_pool=self._pool)
                self._raw = RawCommands(self._pool)
                for name in ("fetch", "restore", "extend", "replay", "unlock", "defer"):
                    script = load_script("celeriac.brokers", f"redis_{name}.lua")
                    self._scripts[name] = self._client.register_script(script)
                self._scripts["rate"] = load_rate_script(self._client)
            return self._client

    def _run(
        self,
        what: str,
        operation: Callable[[redis.Redis], Any],
        *,
        error: type[BrokerError] = BrokerError,
    ) -> Any:
        client = self._connection()
        assert self._pool is not None
        return call_with_retry(
            lambda: operation(client),
            pool=self._pool,
            policy=self._retry_policy,
            what=what,
            error=error,
            unreachable=BrokerConnectionError,
        )

    def _raw_commands(self) -> RawCommands:
        self._connection()
        raw = self._raw
        assert raw is not None
        return raw

    def _script(self, name: str) -> Any:
        self._connection()
        return self._scripts[name]

    def _now(self) -> str:
        # One text for ZADD and the held record, so scores compare exactly in Lua.
        return f"{self.clock.time():.6f}"

    def _step(self, priority: int) -> int:
        # kombu's Channel.priority: steps[bisect(steps, n) - 1], wrapping to the last
        # step when n is below the first one.
        chosen = self._steps[-1]
        for step in self._steps:
            if step <= priority:
                chosen = step
            else:
                break
        return chosen

    def _list_key(self, queue: str, priority: int) -> str:
        step = self._step(clamp_priority(priority))
        if step == 0:
            return self._prefix + queue
        return f"{self._prefix}{queue}{self._sep}{step}"

    def _step_keys(self, queue: str) -> list[str]:
        return [
            self._prefix + queue if step == 0 else f"{self._prefix}{queue}{self._sep}{step}"
            for step in self._steps
        ]

    # -- lifecycle ------------------------------------------------------------------

    def connect(self) -> None:
        self._run("connect", lambda client: client.ping(), error=BrokerConnectionError)

    def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()
        with self._lock:
            pool, self._pool, self._client = self._pool, None, None
            raw, self._raw = self._raw, None
            self._scripts.clear()
        if raw is not None:
            raw.close()
        if pool is not None:
            pool.disconnect()

    def startup_warnings(self) -> list[str]:
        warning = self.eviction_warning()
        return [warning] if warning else []

    def eviction_warning(self) -> str | None:
        """A warning for the worker's start banner when Redis may evict our keys.

        Returns None when `maxmemory-policy` is `noeviction` (or the server does not let
        us read its configuration, as some managed services do not).
        """

        def read(client: redis.Redis) -> Any:
            try:
                return client.config_get("maxmemory-policy")
            except redis_errors.ResponseError:
                return {}

        policy = self._run("read maxmemory-policy", read).get("maxmemory-policy")
        if policy is None:
            return None
        policy = policy.decode() if isinstance(policy, bytes) else str(policy)
        if policy == "noeviction":
            return None
        return (
            f"Redis at {self.safe_url()} has maxmemory-policy {policy!r}: when it runs out "
            "of memory it may evict queued messages, leases and delayed tasks, which are "
            "then lost. Set maxmemory-policy to noeviction (CONFIG SET maxmemory-policy "
            "noeviction, and in redis.conf)."
        )

    # -- producing ------------------------------------------------------------------

    def declare(self, queue: str) -> None:
        if queue in self._declared:
            return
        # Celery compat: Celery declares Queue(name, Exchange(name, 'direct'), name);
        # kombu 5.7 writes the binding to both tables in one MULTI.
        member = f"{queue}{self._sep}{self._sep}{queue}"

        def bind(client: redis.Redis) -> None:
            with client.pipeline() as pipe:
                pipe.sadd(self._prefix + BINDING_PREFIX + queue, member)
                pipe.sadd(self._prefix + BINDING_PERMANENT_PREFIX + queue, member)
                pipe.execute()

        self._run(f"declare queue {queue}", bind)
        self._declared.add(queue)

    def _envelope(
        self,
        message: Message,
        *,
        exchange: str,
        routing_key: str,
        priority: int,
        tag: str | None = None,
    ) -> bytes:
        properties = {
            key: value
            for key, value in message.properties.items()
            if key not in _TRANSPORT_PROPERTIES and key != "priority"
        }
        # Celery compat: kombu's key order (§2.2); priority is always present.
        properties["delivery_info"] = {"exchange": exchange, "routing_key": routing_key}
        properties["priority"] = priority
        properties["body_encoding"] = "base64"
        properties["delivery_tag"] = tag or str(uuid.uuid4())
        envelope = {
            "body": base64.b64encode(message.body).decode("ascii"),
            "content-encoding": message.content_encoding,
            "content-type": message.content_type,
            "headers": message.headers,
            "properties": properties,
        }
        try:
            return orjson.dumps(
                envelope, default=_json_default, option=orjson.OPT_PASSTHROUGH_DATETIME
            )
        except (TypeError, SerializationError) as exc:
            raise PublishError(f"cannot encode the message envelope: {exc}") from exc

    def _stage(self, pipe: Any, items: Sequence[Outgoing]) -> None:
        """Queue the commands that publish `items` on `pipe`: an ETA message goes to its
        sorted set, the others to their lists, one LPUSH per list in publish order (the
        first pushed is the first popped: consumers take the tail)."""
        pushes: dict[str, list[bytes]] = {}
        for item in items:
            message, queue, eta = item.message, item.queue, item.eta
            priority = item.priority if item.priority is not None else message.priority
            level = clamp_priority(priority)
            envelope = self._envelope(
                message,
                exchange=item.exchange or "",
                routing_key=item.routing_key or queue,
                priority=level,
            )
            due = eta.timestamp() if eta is not None and self._broker_side_eta else None
            if due is not None and due > self.clock.time():
                pipe.zadd(self._prefix + DELAYED_PREFIX + queue, {envelope: due})
                # LT: the index keeps each queue's earliest due time.
                pipe.zadd(self._delayed_index, {queue: due}, lt=True)
            else:
                pushes.setdefault(self._list_key(queue, level), []).append(envelope)
        for key, envelopes in pushes.items():
            pipe.lpush(key, *envelopes)

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
        if eta is None or not self._broker_side_eta:
            # The hot path: one LPUSH, as kombu does.
            level = clamp_priority(priority if priority is not None else message.priority)
            key = self._list_key(queue, level)
            envelope = self._envelope(
                message, exchange=exchange or "", routing_key=routing_key or queue, priority=level
            )
            raw = self._raw_commands()
            self._run(f"publish to {queue}", lambda client: raw.execute("LPUSH", key, envelope))
            self._published += 1
            return

        item = Outgoing(
            message,
            queue=queue,
            eta=eta,
            priority=priority,
            exchange=exchange,
            routing_key=routing_key,
        )

        def send(client: redis.Redis) -> None:
            # MULTI: an ETA message lands in its sorted set and the index together.
            with client.pipeline(transaction=True) as pipe:
                self._stage(pipe, [item])
                pipe.execute()

        self._run(f"publish to {queue}", send, error=PublishError)
        self._published += 1

    def publish_many(self, items: Sequence[Outgoing]) -> None:
        if not items:
            return

        def send(client: redis.Redis) -> None:
            # One MULTI: all or nothing, so a retry after a lost reply is exact.
            with client.pipeline(transaction=True) as pipe:
                self._stage(pipe, items)
                pipe.execute()

        self._run(f"publish {len(items)} messages", send, error=PublishError)
        self._published += len(items)

    # -- consuming ------------------------------------------------------------------

    def _plan(self, queues: Sequence[str]) -> _Plan:
        key = tuple(queues)
        plan = self._plans.get(key)
        if plan is None:
            list_keys: list[str] = []
            list_queues: list[str] = []
            for step in self._steps:
                for queue in queues:
                    suffix = "" if step == 0 else f"{self._sep}{step}"
                    list_keys.append(f"{self._prefix}{queue}{suffix}")
                    list_queues.append(queue)
            watched = frozenset(k.encode() for k in (*list_keys, self._delayed_index))
            plan = _Plan(key, tuple(list_keys), tuple(list_queues), watched)
            if len(self._plans) > 64:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _ordered(self, queues: Sequence[str]) -> list[str]:
        """Round-robin over queues inside a priority step, as kombu's default cycle."""
        if set(self._cycle) != set(queues) or len(self._cycle) != len(queues):
            self._cycle = list(dict.fromkeys(queues))
        return self._cycle

    def _rotate(self, served: Iterable[str]) -> None:
        for queue in dict.fromkeys(served):
            if queue in self._cycle:
                self._cycle.remove(queue)
                self._cycle.append(queue)

    def receive(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[Delivery]:
        return self._receive(queues, limit=limit, timeout=timeout, acks=())

    def receive_after_ack(
        self, acks: Sequence[Delivery], queues: Sequence[str], *, limit: int, timeout: float
    ) -> list[Delivery]:
        # This consumer's own leases are acked inside the fetch script (one round trip
        # per batch); anything else (none, in practice) the usual way.
        own = [d for d in acks if self._held_of(d, self._held_key) == self._held_key]
        if len(own) != len(acks):
            self.ack_many([d for d in acks if d not in own])
        return self._receive(queues, limit=limit, timeout=timeout, acks=own)

    def _receive(
        self, queues: Sequence[str], *, limit: int, timeout: float, acks: Sequence[Delivery]
    ) -> list[Delivery]:
        if limit <= 0 or not queues:
            if acks:
                self.ack_many(acks)
            return []
        limit = min(limit, MAX_BATCH)
        deadline = time.monotonic() + max(0.0, timeout)
        poll = 0.005
        while True:
            plan = self._plan(self._ordered(queues))
            watcher = self._ensure_watcher(plan)
            # Notifications that arrived before a fetch are covered by it: drained first,
            # a wait after an empty fetch wakes only for newer writes. After a full batch
            # the drain (a poll and a read) is skipped but for one every DRAIN_EVERY: a
            # leftover can only wake a later wait early, and that loop drains, its fetch
            # having come back short. Never between a fetch and a wait: no lost wake-up.
            now = time.monotonic()
            if watcher is not None and (self._ran_dry or now - self._drained_at >= DRAIN_EVERY):
                try:
                    watcher.drain()
                except _WATCH_ERRORS:
                    self._drop_watcher()
                    watcher = None
                self._drained_at = now
            crashing = armed()  # test-only crash points around ETA promotion
            if crashing and self._next_due is not None and self._next_due <= self.clock.time():
                crash_point("before_promote")  # this fetch will promote
            next_due, deliveries = self._fetch(plan, limit, acks)
            self._next_due = next_due
            self._ran_dry = len(deliveries) < limit
            if crashing and any(d.message.headers.get("eta") for d in deliveries):
                crash_point("after_promote")  # leased, not yet handed over
            if acks:
                self._acked += len(acks)
                acks = ()
            if deliveries:
                self._received += len(deliveries)
                if len(plan.queues) > 1:
                    self._rotate(d.queue for d in deliveries)
                return deliveries
            now = time.monotonic()
            if now - self._last_sweep >= self._sweep_interval:
                self._last_sweep = now
                self.restore_expired()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            pause = min(remaining, self._wakeup_interval, self._sweep_interval)
            if next_due is not None:
                pause = min(pause, max(0.0, next_due - self.clock.time()) + 0.001)
            if watcher is None:
                time.sleep(min(pause, poll))
                poll = min(poll * 2, self._poll_max)
                continue
            try:
                woken = watcher.wait(pause)
            except _WATCH_ERRORS:
                self._drop_watcher()
                continue
            # Nothing was written to our keys and nothing came due: another fetch would
            # find nothing, so an idle consumer costs one script call per timeout.
            if not woken and deadline - time.monotonic() <= 0:
                return []

    def _ensure_watcher(self, plan: _Plan) -> KeyWatcher | None:
        watcher = self._watcher
        if watcher is not None and watcher.watched == plan.watched:
            return watcher
        if watcher is not None:
            self._drop_watcher(failed=False)
        # After a failure, try again at most once a second; meanwhile receive polls.
        if not self._tracking or time.monotonic() - self._watcher_failed_at < 1.0:
            return None
        self._connection()
        assert self._pool is not None
        try:
            self._watcher = KeyWatcher(self._pool, plan.watched)
        except redis_errors.ResponseError as exc:
            self._tracking = False
            logger.info(
                "Redis at %s refuses CLIENT TRACKING (%s): idle consumers will poll",
                self.safe_url(),
                exc,
            )
            return None
        except _WATCH_ERRORS as exc:
            self._watcher_failed_at = time.monotonic()
            logger.debug("cannot open the wake-up connection to %s: %s", self.safe_url(), exc)
            return None
        return self._watcher

    def _drop_watcher(self, *, failed: bool = True) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()
        if failed:
            self._watcher_failed_at = time.monotonic()

    def _fetch(
        self, plan: _Plan, limit: int, acks: Sequence[Delivery] = ()
    ) -> tuple[float | None, list[Delivery]]:
        token = uuid.uuid4().hex
        keys = [
            self._unacked,
            self._index,
            self._held_key,
            self._crashes,
            self._delayed_index,
            self._prefix + LAST_FETCH_PREFIX + self.consumer_id,
            *plan.list_keys,
        ]
        script = self._script("fetch")
        raw = self._raw_commands()

        def fetch(client: redis.Redis) -> Any:
            # The same token on a retry: the script hands back a batch it leased for a
            # call whose reply was lost instead of leasing another one.
            args = [
                self._now(),
                limit,
                token,
                self._held_ttl,
                self._prefix,
                self._sep,
                self._steps_text,
                PROMOTE_BUDGET,
                self._prefix + DELAYED_PREFIX,
                len(acks),
                *(d.tag for d in acks),
                *plan.list_queues,
            ]
            return raw.script(script, keys, args)

        reply = self._run(f"receive from {', '.join(plan.queues)}", fetch)
        next_due = float(reply[0]) if reply[0] is not None else None
        replayed = reply[1] == 1
        deliveries = []
        for i in range(2, len(reply), 4):
            queue = plan.list_queues[int(reply[i]) - 1]
            payload: bytes = reply[i + 1]
            if replayed:
                payload = self._envelope_of_entry(payload)
            deliveries.append(
                self._delivery(payload, queue, reply[i + 2].decode(), int(reply[i + 3]))
            )
        return next_due, deliveries

    @staticmethod
    def _envelope_of_entry(entry: bytes) -> bytes:
        try:
            value = json.loads(entry)
            return json.dumps(value[0]).encode()
        except (ValueError, TypeError, IndexError, KeyError):
            return entry

    def _delivery(self, raw: bytes, queue: str, tag: str, crashes: int) -> Delivery:
        handle = _Handle(raw, self._held_key)
        headers: Any = {}
        properties: dict[str, Any] = {}
        try:
            envelope = json_loads(raw)
            if not isinstance(envelope, dict):
                raise SerializationError("the envelope is not a JSON object")
            properties = envelope.get("properties") or {}
            properties = dict(properties) if isinstance(properties, dict) else {}
            headers = envelope.get("headers")
            info = properties.get("delivery_info")
            info = info if isinstance(info, dict) else {}
            body = envelope.get("body")
            if properties.get("body_encoding") == "base64" and isinstance(body, str):
                body_bytes = base64.b64decode(body)
            elif isinstance(body, str):
                body_bytes = body.encode("utf-8")
            else:
                body_bytes = b"" if body is None else json_dumps(body)
            message = Message(
                headers=headers if isinstance(headers, dict) else {},
                body=body_bytes,
                properties={k: v for k, v in properties.items() if k not in _TRANSPORT_PROPERTIES},
                # No content type: refused by the worker (as on every broker), not guessed.
                content_type=str(envelope.get("content-type") or ""),
                content_encoding=str(envelope.get("content-encoding") or "utf-8"),
            )
        except (SerializationError, ValueError, TypeError) as exc:
            # Hand it out anyway (leased), so the worker dead-letters it with a reason.
            logger.warning("malformed message envelope in queue %s (tag %s): %s", queue, tag, exc)
            # Keep what could be read (a body that is not base64 under good headers):
            # the dead letter and the worker's log line can then name the task.
            headers = headers if isinstance(headers, dict) else {}
            message = Message(
                headers=headers,
                body=raw,
                properties={k: v for k, v in properties.items() if k not in _TRANSPORT_PROPERTIES},
                content_type=INVALID_ENVELOPE,
            )
            info = {}
        redelivered = bool(info.get("redelivered")) or (
            isinstance(headers, dict) and bool(headers.get("redelivered"))
        )
        return Delivery(
            message=message,
            queue=queue,
            tag=tag,
            exchange=str(info.get("exchange") or ""),
            routing_key=str(info.get("routing_key") or queue),
            redelivered=redelivered,
            crashes=crashes,
            handle=handle,
        )

    # -- acknowledging ----------------------------------------------------------------

    @staticmethod
    def _held_of(delivery: Delivery, default: str) -> str:
        handle = delivery.handle
        return handle.held_key if isinstance(handle, _Handle) else default

    def _remove(self, deliveries: Sequence[Delivery], what: str) -> None:
        if not deliveries:
            return
        tags = [d.tag for d in deliveries]
        by_held: dict[str, list[str]] = {}
        for delivery in deliveries:
            by_held.setdefault(self._held_of(delivery, self._held_key), []).append(delivery.tag)

        raw = self._raw_commands()
        commands: list[tuple[Any, ...]] = [
            ("ZREM", self._index, *tags),
            ("HDEL", self._unacked, *tags),
            *(("HDEL", held, *held_tags) for held, held_tags in by_held.items()),
            ("HDEL", self._crashes, *tags),
        ]

        def remove(client: redis.Redis) -> None:
            # Celery compat: kombu's ack is ZREM unacked_index + HDEL unacked in a MULTI.
            raw.transaction(*commands)

        self._run(what, remove)

    def ack(self, delivery: Delivery) -> None:
        self._remove([delivery], f"ack {delivery.tag}")
        self._acked += 1

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        self._remove(deliveries, f"ack {len(deliveries)} messages")
        self._acked += len(deliveries)

    def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        self._rejected += 1
        if not requeue:
            # Celery compat: kombu drops a message rejected without requeue.
            self._remove([delivery], f"reject {delivery.tag}")
            return
        # Celery compat: kombu 5.7 requeues a rejected message at the back of the line.
        self._restore_own([delivery], action="L")

    def defer(self, delivery: Delivery, *, eta: datetime, message: Message | None = None) -> None:
        """Hand a leased message back to wait in the delayed set until `eta`, atomically.

        One script (`redis_defer.lua`, one round trip) ends the lease and adds the
        delayed copy together, so a crash can neither lose nor duplicate it; if the lease
        lapsed and went back to the queue meanwhile, the message is left to whoever takes
        it next. The delivery tag is kept (its crash count stays with it); the
        redelivered flag is not, since waiting for an ETA is no redelivery.
        """
        keys, args = self._defer_call(delivery, eta=eta, message=message)
        script = self._script("defer")
        moved = self._run(
            f"defer {delivery.tag} to {eta.isoformat()}",
            lambda client: script(keys=keys, args=args, client=client),
        )
        if not moved:
            self._log_not_deferred(delivery)

    def defer_many(self, deferrals: Sequence[Deferral]) -> None:
        """`defer` each, the scripts pipelined: one round trip for the batch (two when
        Redis lost the script and redis-py loads it again). Each script stands alone, so
        a pipeline sent again after a lost connection moves nothing twice.

        Raises:
            BrokerError: Redis refused a script (the first error is named); the other
                scripts of the batch ran, and a message they moved is no longer leased.
        """
        if len(deferrals) <= 1:
            for item in deferrals:
                self.defer(item.delivery, eta=item.eta, message=item.message)
            return
        calls = [
            self._defer_call(item.delivery, eta=item.eta, message=item.message)
            for item in deferrals
        ]
        script = self._script("defer")

        def run(client: redis.Redis) -> list[Any]:
            with client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    script(keys=keys, args=args, client=pipe)
                return pipe.execute(raise_on_error=False)

        replies = self._run(f"defer {len(calls)} messages", run)
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
        """Keys and arguments of `redis_defer.lua` for one message."""
        source = message or delivery.message
        if "redelivered" in source.headers:
            headers = {k: v for k, v in source.headers.items() if k != "redelivered"}
            source = Message(
                headers=headers,
                body=source.body,
                properties=source.properties,
                content_type=source.content_type,
                content_encoding=source.content_encoding,
            )
        level = clamp_priority(source.priority)
        envelope = self._envelope(
            source,
            exchange=delivery.exchange,
            routing_key=delivery.routing_key or delivery.queue,
            priority=level,
            tag=delivery.tag,
        )
        due = eta.timestamp()
        queue = delivery.queue
        if due > self.clock.time():
            destination, mode = self._prefix + DELAYED_PREFIX + queue, "Z"
        else:
            destination, mode = self._list_key(queue, level), "L"
        keys = [
            self._unacked,
            self._index,
            self._held_of(delivery, self._held_key),
            destination,
            self._delayed_index,
        ]
        return keys, [delivery.tag, envelope, f"{due:.6f}", queue, mode]

    @staticmethod
    def _log_not_deferred(delivery: Delivery) -> None:
        logger.info(
            "not deferring %s: its lease lapsed and it went back to queue %s",
            delivery.tag,
            delivery.queue,
        )

    def requeue_many(self, deliveries: Sequence[Delivery]) -> None:
        # Celery compat: kombu restores a closing channel's messages to be consumed next.
        self._restore_own(deliveries, action="R")

    def _restore_own(self, deliveries: Sequence[Delivery], *, action: str) -> int:
        groups: list[str | bytes] = []
        for delivery in deliveries:
            handle = delivery.handle
            if not isinstance(handle, _Handle):
                logger.error("cannot requeue %s: not a delivery of this broker", delivery.tag)
                continue
            # An envelope that is not JSON goes back unchanged: requeue never drops.
            envelope = self._redelivered_envelope(handle.envelope) or handle.envelope
            priority = clamp_priority(delivery.message.priority)
            groups += [
                delivery.tag,
                handle.held_key,
                action,
                self._list_key(delivery.queue, priority),
                envelope,
                "0",
            ]
        restored, _ = self._restore_groups(groups, ceiling=0.0, what="requeue")
        return restored

    def _restore_groups(
        self, groups: list[str | bytes], *, ceiling: float, what: str
    ) -> tuple[int, int]:
        restored = dropped = 0
        script = self._script("restore")
        keys = [self._unacked, self._index, self._crashes]
        step = 6 * RESTORE_CHUNK
        for start in range(0, len(groups), step):
            chunk = groups[start : start + step]

            def restore(client: redis.Redis, chunk: list[str | bytes] = chunk) -> Any:
                return script(keys=keys, args=[f"{ceiling:.6f}", *chunk], client=client)

            done = self._run(what, restore)
            restored += int(done[0])
            dropped += int(done[1])
        return restored, dropped

    @staticmethod
    def _redelivered_envelope(raw: bytes) -> str | None:
        """The envelope with kombu's redelivered flags, or None if it is not JSON."""
        try:
            envelope = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(envelope, dict):
            return None
        _flag_redelivered(envelope)
        # Celery compat: kombu's json.dumps layout; stdlib json keeps big ints exact.
        return json.dumps(envelope)

    def extend(self, deliveries: Sequence[Delivery], *, seconds: float) -> None:
        if not deliveries:
            return
        # The sweep restores a tag once its score is older than now - visibility_timeout,
        # so a lease that must last `seconds` more is scored accordingly.
        score = f"{self.clock.time() + seconds - self.visibility_timeout:.6f}"
        args: list[Any] = [score, self._held_ttl]
        for delivery in deliveries:
            args += [delivery.tag, self._held_of(delivery, self._held_key)]
        script = self._script("extend")
        self._run(
            f"extend {len(deliveries)} leases",
            lambda client: script(keys=[self._index], args=args, client=client),
        )

    # -- recovering -----------------------------------------------------------------

    def _destination(
        self, exchange: str, routing_key: str, tables: dict[str, list[tuple[str, str, str]]]
    ) -> str:
        """The queue a restored message goes to, found the way kombu's _lookup does."""
        if not exchange:
            return routing_key
        table = tables.get(exchange)
        if table is None:
            members = self._run(
                f"read bindings of {exchange}",
                lambda client: client.smembers(self._prefix + BINDING_PREFIX + exchange),
            )
            table = []
            for member in members:
                parts = member.decode().split(self._sep)
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
        self,
        entry: bytes,
        queue: str | None,
        tables: dict[str, list[tuple[str, str, str]]],
    ) -> tuple[str, str] | None:
        """Destination list and redelivered envelope for an `unacked` entry."""
        try:
            envelope, exchange, routing_key = json.loads(entry)
        except (ValueError, TypeError):
            return None
        if not isinstance(envelope, dict):
            return None
        if queue is None:
            queue = self._destination(str(exchange or ""), str(routing_key or ""), tables)
        _flag_redelivered(envelope)
        properties = envelope.get("properties")
        priority = properties.get("priority") if isinstance(properties, dict) else None
        try:
            level = clamp_priority(priority if isinstance(priority, int) else None)
        except (TypeError, ValueError):
            level = 0
        return self._list_key(queue, level), json.dumps(envelope)

    def recover(
        self,
        consumer_id: str,
        *,
        running: Collection[str] = (),
        discard: Collection[str] = (),
    ) -> int:
        held_key = self._prefix + HELD_PREFIX + consumer_id
        records: dict[bytes, bytes] = self._run(
            f"read leases of {consumer_id}", lambda client: client.hgetall(held_key)
        )
        if not records:
            return 0
        tags = [tag.decode() for tag in records]
        entries = self._run(
            f"read leases of {consumer_id}", lambda client: client.hmget(self._unacked, tags)
        )
        running_set, discard_set = set(running), set(discard)
        tables: dict[str, list[tuple[str, str, str]]] = {}
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

    def restore_expired(self) -> int:
        """kombu's visibility-timeout sweep: return lapsed leases, consumed next."""
        token = uuid.uuid4().hex
        acquired = self._run(
            "lock the unacked sweep",
            lambda client: client.set(
                self._mutex, token, nx=True, px=int(self._mutex_expire * 1000)
            ),
        )
        if not acquired:
            return 0
        try:
            ceiling = self.clock.time() - self.visibility_timeout
            lapsed = self._run(
                "find lapsed leases",
                lambda client: client.zrangebyscore(
                    self._index, "-inf", ceiling, start=0, num=self._restore_limit
                ),
            )
            if not lapsed:
                return 0
            tags = [tag.decode() for tag in lapsed]
            entries = self._run(
                "read lapsed leases", lambda client: client.hmget(self._unacked, tags)
            )
            tables: dict[str, list[tuple[str, str, str]]] = {}
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
                groups += [tag, "", "R", prepared[0], prepared[1], "0"]
            restored, _ = self._restore_groups(groups, ceiling=ceiling, what="restore leases")
            if restored:
                logger.info("restored %d message(s) whose lease lapsed", restored)
            return restored
        finally:
            unlock = self._script("unlock")
            self._run(
                "unlock the unacked sweep",
                lambda client: unlock(keys=[self._mutex], args=[token], client=client),
            )

    # -- dead letters ---------------------------------------------------------------

    def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        handle = delivery.handle
        raw = handle.envelope if isinstance(handle, _Handle) else b""
        dead_id = uuid.uuid4().hex
        failed_at = self.clock.time()
        record: dict[str, Any] = {
            "id": dead_id,
            "queue": delivery.queue,
            "reason": reason,
            "failed_at": failed_at,
            "exchange": delivery.exchange,
            "routing_key": delivery.routing_key,
            "tag": delivery.tag,
        }
        try:
            record["envelope"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            record["envelope_base64"] = base64.b64encode(raw).decode("ascii")
        data = json.dumps(record)
        held = self._held_of(delivery, self._held_key)

        def move(client: redis.Redis) -> None:
            # One MULTI: the message leaves its lease and enters the store together.
            with client.pipeline(transaction=True) as pipe:
                pipe.zrem(self._index, delivery.tag)
                pipe.hdel(self._unacked, delivery.tag)
                pipe.hdel(held, delivery.tag)
                pipe.hdel(self._crashes, delivery.tag)
                pipe.hset(self._dead, dead_id, data)
                pipe.zadd(self._dead_index, {dead_id: failed_at})
                pipe.execute()

        self._run(f"dead-letter {delivery.tag}", move)
        self._dead_lettered += 1
        logger.warning(
            "dead-lettered message %s from queue %s: %s", delivery.tag, delivery.queue, reason
        )

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
        delivery = self._delivery(raw, record.get("queue", ""), record.get("tag", ""), 0)
        return DeadLetter(
            id=dead_id,
            queue=str(record.get("queue", "")),
            reason=str(record.get("reason", "")),
            message=delivery.message,
            failed_at=datetime.fromtimestamp(float(record.get("failed_at", 0)), UTC),
        )

    def list_dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        ids = self._run(
            "list dead letters", lambda client: client.zrange(self._dead_index, 0, limit - 1)
        )
        if not ids:
            return []
        records = self._run("read dead letters", lambda client: client.hmget(self._dead, ids))
        letters = []
        for dead_id, data in zip(ids, records, strict=True):
            if data is not None:
                letter = self._dead_letter_of(dead_id.decode(), data)
                if letter is not None:
                    letters.append(letter)
        return letters

    def replay_dead_letter(self, dead_letter_id: str) -> bool:
        data = self._run(
            f"read dead letter {dead_letter_id}",
            lambda client: client.hget(self._dead, dead_letter_id),
        )
        if data is None:
            return False
        letter = self._dead_letter_of(dead_letter_id, data)
        if letter is None:
            return False
        record = json.loads(data)
        headers = {k: v for k, v in letter.message.headers.items() if k != "redelivered"}
        message = Message(
            headers=headers,
            body=letter.message.body,
            properties=letter.message.properties,
            content_type=letter.message.content_type,
            content_encoding=letter.message.content_encoding,
        )
        priority = clamp_priority(message.priority)
        envelope = self._envelope(
            message,
            exchange=str(record.get("exchange") or ""),
            routing_key=str(record.get("routing_key") or letter.queue),
            priority=priority,
        )
        script = self._script("replay")
        keys = [self._dead, self._dead_index, self._list_key(letter.queue, priority)]
        replayed = self._run(
            f"replay dead letter {dead_letter_id}",
            lambda client: script(keys=keys, args=[dead_letter_id, envelope], client=client),
        )
        return bool(replayed)

    def purge_dead_letters(self) -> int:
        def purge(client: redis.Redis) -> Any:
            with client.pipeline(transaction=True) as pipe:
                pipe.hlen(self._dead)
                pipe.delete(self._dead, self._dead_index)
                return pipe.execute()

        return int(self._run("purge dead letters", purge)[0])

    # -- queues ---------------------------------------------------------------------

    def size(self, queue: str) -> int:
        def count(client: redis.Redis) -> Any:
            with client.pipeline(transaction=False) as pipe:
                for key in self._step_keys(queue):
                    pipe.llen(key)
                pipe.zcard(self._prefix + DELAYED_PREFIX + queue)
                return pipe.execute()

        return sum(int(n) for n in self._run(f"size of {queue}", count))

    def purge(self, queue: str) -> int:
        delayed = self._prefix + DELAYED_PREFIX + queue

        def purge(client: redis.Redis) -> Any:
            with client.pipeline(transaction=True) as pipe:
                for key in self._step_keys(queue):
                    pipe.llen(key)
                    pipe.delete(key)
                pipe.zcard(delayed)
                pipe.delete(delayed)
                pipe.zrem(self._delayed_index, queue)
                return pipe.execute()

        replies = self._run(f"purge {queue}", purge)
        return sum(int(n) for n in replies[0:-3:2]) + int(replies[-3])

    # -- rate limits ----------------------------------------------------------------

    def reserve_rate_slot(self, key: str, *, interval: float) -> float:
        script = self._script("rate")
        slot: float = self._run(
            f"reserve a rate slot for {key}",
            lambda client: reserve_rate_slot(
                script,
                client,
                self._prefix + RATE_PREFIX + key,
                now=self.clock.time(),
                interval=interval,
            ),
        )
        return slot
