"""The Redis broker: publishing, fetching and leasing, acks, lease renewal and queue sizes.

The rest of the package is beside it: `keys` (the key layout), `envelope` (kombu's
envelope format), `recovery` (the visibility sweep, `recover`, requeue), `defer`,
`dead_letters`, and the Lua scripts (`*.lua`) they run.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
import redis.exceptions as redis_errors

from celeriac._crashpoints import armed, crash_point
from celeriac.brokers.base import Broker, Delivery, Outgoing, QueueDepth, clamp_priority
from celeriac.brokers.redis.dead_letters import DeadLetters
from celeriac.brokers.redis.defer import Deferrals
from celeriac.brokers.redis.envelope import (
    encode_envelope,
    envelope_of_entry,
    held_of,
    read_delivery,
)
from celeriac.brokers.redis.keys import Keys, Plan
from celeriac.brokers.redis.monitor import count_dead_letters, overdue_age
from celeriac.brokers.redis.presence import Presence
from celeriac.brokers.redis.publish_token import TOKEN_TTL, PublishTokens
from celeriac.brokers.redis.recovery import Recovery
from celeriac.connections.redis import RETRYABLE_ERRORS, RedisClient, load_script
from celeriac.connections.redis_clock import ServerClock, read_server_time
from celeriac.connections.redis_watch import KeyWatcher
from celeriac.exceptions import (
    BrokerConnectionError,
    BrokerError,
    ImproperlyConfigured,
    PublishError,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping, Sequence
    from datetime import datetime

    import redis

    from celeriac.brokers.base import ConsumerRecord, DeadLetter, Deferral
    from celeriac.protocol.message import Message

__all__ = ["RedisBroker"]

logger = logging.getLogger(__name__)

# The shortest time between two warnings about publishes too few replicas confirmed.
REPLICA_WARNING_INTERVAL = 10.0

# Largest batch one fetch leases (keeps each script call short).
MAX_BATCH = 1000
# A consumer whose fetches come back full drains its wake-up connection at least this
# often (seconds), so notifications do not pile up on it while it is busy.
DRAIN_EVERY = 0.1
# Due ETA messages one fetch promotes at most; the next fetch continues.
PROMOTE_BUDGET = 1000
# Anything that can go wrong on the wake-up connection; receive falls back to polling.
_WATCH_ERRORS: tuple[type[BaseException], ...] = (
    *RETRYABLE_ERRORS,
    redis_errors.RedisError,
    OSError,
)


class RedisBroker(Broker):
    """Redis transport with kombu's layout (see the module docstring).

    Transport options (all optional; kombu's names where kombu has the setting):
        global_keyprefix, sep, priority_steps, visibility_timeout (3600 s, as kombu:
        every peer sweeps the shared `unacked_index`, so the smallest value wins),
        unacked_key, unacked_index_key, unacked_mutex_key, unacked_mutex_expire,
        unacked_restore_limit, unacked_restore_interval (seconds between sweeps run by an
        idle `receive`), wakeup_interval (longest idle wait between fetches),
        wake_by_tracking (wait on CLIENT TRACKING invalidations; False polls),
        polling_interval (longest poll step when polling), broker_side_eta ("auto", the
        default: ETA messages wait in Redis while a celeriac consumer is alive to promote
        them, otherwise they go to their list as kombu pushes them; True: always in
        Redis; False: always to the list), connection_retries,
        connection_retry_backoff, connection_retry_backoff_max, and connection settings:
        socket_timeout, socket_connect_timeout, socket_keepalive, health_check_interval,
        max_connections, client_name, ssl (dict of ssl_* settings, for rediss://);
        for sentinel:// URLs master_name, sentinel_kwargs, min_other_sentinels, and
        replicas_to_confirm / replica_confirm_timeout (WAIT after every publish).
    """

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss", "redis+socket", "sentinel")
    supports_priority: ClassVar[bool] = True
    # Celery compat: on Redis priority 0 is served first (kombu pops step lists 0,3,6,9).
    higher_priority_first: ClassVar[bool] = False
    supports_native_delay: ClassVar[bool] = True
    supports_rate_limit: ClassVar[bool] = True
    supports_leases: ClassVar[bool] = True
    supports_recover: ClassVar[bool] = True
    supports_presence: ClassVar[bool] = True
    # Celery compat: kombu's default; peers sharing unacked_index should agree on it.
    default_visibility_timeout: ClassVar[float] = 3600.0

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        options = self.transport_options
        self._keys = keys = Keys(options, self.consumer_id)
        self._tokens = PublishTokens(keys.prefix)
        default_sweep = max(0.05, min(self.visibility_timeout / 4, 60.0))
        self._sweep_interval = float(options.get("unacked_restore_interval", default_sweep))
        self._wakeup_interval = float(options.get("wakeup_interval", 2.0))
        self._poll_max = float(options.get("polling_interval", 0.1))
        # False: ETA messages go straight to their list like kombu's (their `eta` header
        # makes the consumer wait), for fleets where no celeriac consumer promotes them;
        # "auto": so while no celeriac consumer is alive (see presence.py).
        eta_mode = options.get("broker_side_eta", "auto")
        if eta_mode not in ("auto", True, False):
            raise ImproperlyConfigured(
                f"broker_transport_options['broker_side_eta']={eta_mode!r} is not usable: "
                'write "auto", True or False'
            )
        self._broker_side_eta = eta_mode is not False
        self._eta_by_presence = eta_mode == "auto"
        # A producer hands over the delayed sets once, if no celeriac consumer is alive.
        self._handoff_checked = self.consumer_id != "producer"
        self._held_ttl = int(max(86400, 4 * self.visibility_timeout))
        # With Sentinel or replicas: how many replicas must hold a publish
        # before it returns (Redis WAIT), and for how long to wait for them.
        self._replicas_to_confirm = int(options.get("replicas_to_confirm", 0))
        self._replica_wait_ms = int(1000 * float(options.get("replica_confirm_timeout", 1.0)))
        self._unreplicated_warned_at = float("-inf")
        self._unreplicated_count = 0
        self._redis = RedisClient(
            url,
            options,
            scripts=_scripts,
            error=BrokerError,
            unreachable=BrokerConnectionError,
        )
        if kwargs.get("clock") is None:
            # Lease scores and due times are shared: stamp them with the server's clock.
            self.clock = ServerClock(
                lambda: self._redis.run("read the server time", read_server_time)
            )
        self._recovery = Recovery(
            self._redis,
            keys,
            clock=self.clock,
            visibility_timeout=self.visibility_timeout,
            mutex_expire=float(options.get("unacked_mutex_expire", 300)),
            restore_limit=int(options.get("unacked_restore_limit") or 1000),
        )
        self._dead_letters = DeadLetters(
            self._redis, keys, clock=self.clock, limits=self.dead_letter_limits
        )
        self._presence = Presence(
            self._redis,
            keys,
            self._recovery,
            consumer_id=self.consumer_id,
            lost_after=self.lost_after,
            record_ttl=self._held_ttl,
        )
        self._deferrals = Deferrals(self._redis, keys, clock=self.clock)
        self._declared: set[str] = set()
        self._cycle: list[str] = []
        self._watcher: KeyWatcher | None = None
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

    def _now(self) -> str:
        # One text for ZADD and the held record, so scores compare exactly in Lua.
        return f"{self.clock.time():.6f}"

    # -- lifecycle ------------------------------------------------------------------

    def connect(self) -> None:
        self._redis.run("connect", lambda client: client.ping(), error=BrokerConnectionError)

    def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()
        self._redis.close()

    def startup_warnings(self) -> list[str]:
        warnings = (self.eviction_warning(), self.persistence_warning())
        return [warning for warning in warnings if warning]

    def persistence_warning(self) -> str | None:
        """A warning for the worker's start banner when Redis keeps no append-only file.

        Returns None when `appendonly` is on (or the configuration cannot be read).
        """

        def read(client: redis.Redis) -> Any:
            try:
                return client.config_get("appendonly")
            except redis_errors.ResponseError:
                return {}

        value = self._redis.run("read appendonly", read).get("appendonly")
        if value is None:
            return None
        value = value.decode() if isinstance(value, bytes) else str(value)
        if value == "yes":
            return None
        return (
            f"Redis at {self.safe_url()} runs without an append-only file (appendonly "
            f"{value}): on a crash it loses every write since its last snapshot, so "
            "confirmed publishes and finished acks can be lost. Set appendonly yes "
            "(CONFIG SET appendonly yes, and in redis.conf)."
        )

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

        policy = self._redis.run("read maxmemory-policy", read).get("maxmemory-policy")
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
        sep = self._keys.sep
        member = f"{queue}{sep}{sep}{queue}"

        def bind(client: redis.Redis) -> None:
            with client.pipeline() as pipe:
                pipe.sadd(self._keys.binding(queue), member)
                pipe.sadd(self._keys.binding_permanent(queue), member)
                pipe.execute()

        self._redis.run(f"declare queue {queue}", bind)
        self._declared.add(queue)

    def _publish_commands(self, items: Sequence[Outgoing]) -> list[tuple[Any, ...]]:
        """The commands that publish `items`: an ETA message goes to its sorted set, the
        others to their lists, one LPUSH per list in publish order (the first pushed is
        the first popped: consumers take the tail)."""
        commands: list[tuple[Any, ...]] = []
        keys = self._keys
        pushes: dict[str, list[bytes]] = {}
        for item in items:
            message, queue, eta = item.message, item.queue, item.eta
            priority = item.priority if item.priority is not None else message.priority
            level = clamp_priority(priority)
            envelope = encode_envelope(
                message,
                exchange=item.exchange or "",
                routing_key=item.routing_key or queue,
                priority=level,
            )
            due = eta.timestamp() if eta is not None and self._broker_side_eta else None
            if due is not None and due > self.clock.time() and self._eta_by_presence:
                commands.append(
                    self._presence.publish_eta_command(
                        queue=queue,
                        due=due,
                        envelope=envelope,
                        list_key=keys.list_key(queue, level),
                    )
                )
            elif due is not None and due > self.clock.time():
                commands.append(("ZADD", keys.delayed(queue), repr(due), envelope))
                # LT: the index keeps each queue's earliest due time.
                commands.append(("ZADD", keys.delayed_index, "LT", repr(due), queue))
            else:
                pushes.setdefault(keys.list_key(queue, level), []).append(envelope)
        commands.extend(("LPUSH", key, *envelopes) for key, envelopes in pushes.items())
        return commands

    def plain_pushes(self, items: Sequence[Outgoing]) -> list[tuple[str, list[bytes]]] | None:
        """The (list key, envelopes) LPUSHes that publish `items`, for a caller that runs
        them inside its own atomic step on this server (beat's claim-and-send); None when
        some item needs more than a push (an ETA still ahead, kept broker-side) or a
        publish must wait for replicas (`replicas_to_confirm`)."""
        if self._replicas_to_confirm:
            return None
        if not self._handoff_checked:
            self._hand_off_once()
        commands = self._publish_commands(items)
        if any(command[0] != "LPUSH" for command in commands):
            return None
        return [(str(command[1]), list(command[2:])) for command in commands]

    def count_published(self, count: int) -> None:
        """Count messages published by a caller's own atomic step (`plain_pushes`)."""
        self._published += count

    def _send(self, items: Sequence[Outgoing], what: str) -> None:
        """Publish `items` in one MULTI (all or nothing) that also writes this thread's
        publish token; a retry after a lost reply sends nothing when the token shows
        the MULTI ran (see publish_token.py). With `replicas_to_confirm`, then WAIT on
        the same connection (WAIT counts this client's own writes)."""
        raw = self._redis.raw()
        token_key, token = self._tokens.next()
        commands = [
            *self._publish_commands(items),
            ("SET", token_key, token, "EX", TOKEN_TTL),
        ]
        replicas = self._replicas_to_confirm
        attempts = 0

        def send(client: redis.Redis) -> int:
            nonlocal attempts
            attempts += 1
            if attempts == 1 or raw.execute("GET", token_key) != token.encode():
                replies = raw.transaction(*commands)
                for reply in replies or ():
                    if isinstance(reply, Exception):  # a command EXEC ran and Redis refused
                        raise reply
            return int(raw.execute("WAIT", replicas, self._replica_wait_ms)) if replicas else 0

        confirmed = self._redis.run(what, send, error=PublishError)
        if confirmed < replicas:
            self._unreplicated(items[0].queue, confirmed)

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
        if not self._handoff_checked:
            self._hand_off_once()
        if eta is None or not self._broker_side_eta:
            # The hot path: one LPUSH, as kombu does (and the publish token behind it).
            level = clamp_priority(priority if priority is not None else message.priority)
            key = self._keys.list_key(queue, level)
            envelope = encode_envelope(
                message, exchange=exchange or "", routing_key=routing_key or queue, priority=level
            )
            raw = self._redis.raw()
            replicas = self._replicas_to_confirm
            token_key, token = self._tokens.next()
            attempts = 0

            def push(client: redis.Redis) -> int:
                nonlocal attempts
                attempts += 1
                # The token is written right behind the push, in the same write: a
                # retry whose first attempt ran finds it and pushes nothing.
                if attempts == 1 or raw.execute("GET", token_key) != token.encode():
                    raw.pipeline(
                        ("LPUSH", key, envelope), ("SET", token_key, token, "EX", TOKEN_TTL)
                    )
                # On the same connection: WAIT counts this client's own writes.
                return int(raw.execute("WAIT", replicas, self._replica_wait_ms)) if replicas else 0

            confirmed = self._redis.run(f"publish to {queue}", push)
            if confirmed < replicas:
                self._unreplicated(queue, confirmed)
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
        # MULTI: an ETA message lands in its sorted set and the index together.
        self._send([item], f"publish to {queue}")
        self._published += 1

    def _unreplicated(self, queue: str, confirmed: int) -> None:
        """Warn (at most every `REPLICA_WARNING_INTERVAL` seconds) about publishes that
        fewer replicas than `replicas_to_confirm` hold."""
        self._unreplicated_count += 1
        now = time.monotonic()
        if now - self._unreplicated_warned_at < REPLICA_WARNING_INTERVAL:
            return
        logger.warning(
            "publish to %s: %d of %d replicas confirmed it within %.1f s (%d such "
            "publishes since the last warning); they are lost if the master fails "
            "before they replicate",
            queue,
            confirmed,
            self._replicas_to_confirm,
            self._replica_wait_ms / 1000,
            self._unreplicated_count,
        )
        self._unreplicated_warned_at = now
        self._unreplicated_count = 0

    def publish_many(self, items: Sequence[Outgoing]) -> None:
        if not items:
            return
        if not self._handoff_checked:
            self._hand_off_once()
        # One MULTI: all or nothing, and token-guarded, so a retry after a lost reply
        # publishes each message once.
        self._send(items, f"publish {len(items)} messages")
        self._published += len(items)

    def _hand_off_once(self) -> None:
        """A producer's first publish: delayed messages left behind when the last
        celeriac consumer died go to their lists if none is alive (see presence.py)."""
        self._handoff_checked = True
        if not self._eta_by_presence:
            return
        try:
            self._presence.hand_off()
        except BrokerError:
            logger.warning("Could not hand the delayed sets over; continuing", exc_info=True)

    # -- consuming ------------------------------------------------------------------

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
        held = self._keys.held
        own = [d for d in acks if held_of(d, held) == held]
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
            plan = self._keys.plan(self._ordered(queues))
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

    def _ensure_watcher(self, plan: Plan) -> KeyWatcher | None:
        watcher = self._watcher
        if watcher is not None and watcher.watched == plan.watched:
            return watcher
        if watcher is not None:
            self._drop_watcher(failed=False)
        # After a failure, try again at most once a second; meanwhile receive polls.
        if not self._tracking or time.monotonic() - self._watcher_failed_at < 1.0:
            return None
        try:
            self._watcher = KeyWatcher(self._redis.pool(), plan.watched)
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
        self, plan: Plan, limit: int, acks: Sequence[Delivery] = ()
    ) -> tuple[float | None, list[Delivery]]:
        token = uuid.uuid4().hex
        k = self._keys
        keys = [
            k.unacked,
            k.index,
            k.held,
            k.crashes,
            k.delayed_index,
            k.last_fetch,
            *plan.list_keys,
        ]
        script = self._redis.script("fetch")
        raw = self._redis.raw()

        def fetch(client: redis.Redis) -> Any:
            # The same token on a retry: the script hands back a batch it leased for a
            # call whose reply was lost instead of leasing another one.
            args = [
                self._now(),
                limit,
                token,
                self._held_ttl,
                k.prefix,
                k.sep,
                k.steps_text,
                PROMOTE_BUDGET,
                k.delayed_prefix(),
                len(acks),
                *(d.tag for d in acks),
                *plan.list_queues,
            ]
            return raw.script(script, keys, args)

        reply = self._redis.run(f"receive from {', '.join(plan.queues)}", fetch)
        next_due = float(reply[0]) if reply[0] is not None else None
        replayed = reply[1] == 1
        held = k.held
        deliveries = []
        for i in range(2, len(reply), 4):
            queue = plan.list_queues[int(reply[i]) - 1]
            payload: bytes = reply[i + 1]
            if replayed:
                payload = envelope_of_entry(payload)
            deliveries.append(
                read_delivery(payload, queue, reply[i + 2].decode(), int(reply[i + 3]), held)
            )
        return next_due, deliveries

    # -- acknowledging ----------------------------------------------------------------

    def _remove(self, deliveries: Sequence[Delivery], what: str) -> None:
        if not deliveries:
            return
        keys = self._keys
        tags = [d.tag for d in deliveries]
        by_held: dict[str, list[str]] = {}
        for delivery in deliveries:
            by_held.setdefault(held_of(delivery, keys.held), []).append(delivery.tag)

        raw = self._redis.raw()
        commands: list[tuple[Any, ...]] = [
            ("ZREM", keys.index, *tags),
            ("HDEL", keys.unacked, *tags),
            *(("HDEL", held, *held_tags) for held, held_tags in by_held.items()),
            ("HDEL", keys.crashes, *tags),
        ]

        def remove(client: redis.Redis) -> None:
            # Celery compat: kombu's ack is ZREM unacked_index + HDEL unacked in a MULTI.
            raw.transaction(*commands)

        self._redis.run(what, remove)

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
        self._recovery.restore_own([delivery], action="L")

    def defer(self, delivery: Delivery, *, eta: datetime, message: Message | None = None) -> None:
        self._deferrals.defer(delivery, eta=eta, message=message)

    def defer_many(self, deferrals: Sequence[Deferral]) -> None:
        if len(deferrals) <= 1:
            for item in deferrals:
                self.defer(item.delivery, eta=item.eta, message=item.message)
            return
        self._deferrals.defer_many(deferrals)

    def requeue_many(self, deliveries: Sequence[Delivery]) -> None:
        # Celery compat: kombu restores a closing channel's messages to be consumed next.
        self._recovery.restore_own(deliveries, action="R")

    def extend(self, deliveries: Sequence[Delivery], *, seconds: float) -> None:
        if not deliveries:
            return
        # The sweep restores a tag once its score is older than now - visibility_timeout,
        # so a lease that must last `seconds` more is scored accordingly.
        score = f"{self.clock.time() + seconds - self.visibility_timeout:.6f}"
        args: list[Any] = [score, self._held_ttl]
        for delivery in deliveries:
            args += [delivery.tag, held_of(delivery, self._keys.held)]
        script = self._redis.script("extend")
        self._redis.run(
            f"extend {len(deliveries)} leases",
            lambda client: script(keys=[self._keys.index], args=args, client=client),
        )

    # -- recovering -----------------------------------------------------------------

    def recover(
        self,
        consumer_id: str,
        *,
        running: Collection[str] = (),
        discard: Collection[str] = (),
    ) -> int:
        returned = self._recovery.recover(consumer_id, running, discard)
        # Its messages are back: it no longer needs reaping.
        self._presence.forget(consumer_id)
        return returned

    def restore_expired(self) -> int:
        """kombu's visibility-timeout sweep: return lapsed leases, consumed next."""
        return self._recovery.restore_expired()

    # -- presence -------------------------------------------------------------------

    def heartbeat(
        self,
        identity: Mapping[str, str | int],
        *,
        held: int,
        running: Sequence[str],
        register: bool = False,
    ) -> bool:
        return self._presence.heartbeat(identity, held=held, running=running, register=register)

    def reap(self) -> dict[str, int]:
        return self._presence.reap()

    def consumers(self) -> list[ConsumerRecord]:
        return self._presence.consumers()

    def dead_letter_count(self) -> int:
        return count_dead_letters(self._redis, self._keys)

    def overdue_age(self, queue: str) -> float | None:
        return overdue_age(self._redis, self._keys, queue)

    def withdraw(self, *, hand_off: bool = False) -> None:
        self._presence.forget(self.consumer_id)
        if hand_off and self._eta_by_presence:
            # The last celeriac consumer to leave hands the delayed sets to the lists.
            self._presence.hand_off()

    # -- dead letters ---------------------------------------------------------------

    def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        self._dead_letters.add(delivery, reason=reason)
        self._dead_lettered += 1

    def list_dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        return self._dead_letters.list(limit=limit)

    def replay_dead_letter(self, dead_letter_id: str) -> bool:
        return self._dead_letters.replay(dead_letter_id)

    def purge_dead_letters(self) -> int:
        return self._dead_letters.purge()

    # -- queues ---------------------------------------------------------------------

    def size(self, queue: str) -> int:
        def count(client: redis.Redis) -> Any:
            with client.pipeline(transaction=False) as pipe:
                for key in self._keys.step_keys(queue):
                    pipe.llen(key)
                pipe.zcard(self._keys.delayed(queue))
                return pipe.execute()

        return sum(int(n) for n in self._redis.run(f"size of {queue}", count))

    def depth(self, queue: str) -> QueueDepth:
        keys = self._keys
        step_keys = keys.step_keys(queue)

        def read(client: redis.Redis) -> Any:
            consumers: Any = client.zrange(keys.presence, 0, -1)
            with client.pipeline(transaction=False) as pipe:
                for key in step_keys:
                    pipe.llen(key)
                    # LPUSH in, RPOP out: the next one out is the last element.
                    pipe.lindex(key, -1)
                pipe.zcard(keys.delayed(queue))
                for member in consumers:
                    pipe.hvals(keys.held_of(member.decode()))
                return pipe.execute()

        replies = self._redis.run(f"depth of {queue}", read)
        lists = replies[: 2 * len(step_keys)]
        ready = sum(int(n) for n in lists[0::2])
        oldest_id = None
        for head in lists[1::2]:
            if head is not None:
                oldest_id = _task_id(head)
                break
        suffix = f"|{queue}".encode()
        held = sum(
            1
            for values in replies[2 * len(step_keys) + 1 :]
            for value in values
            if value.endswith(suffix)
        )
        return QueueDepth(
            queue=queue,
            ready=ready,
            delayed=int(replies[2 * len(step_keys)]),
            held=held,
            oldest_id=oldest_id,
        )

    def purge(self, queue: str) -> int:
        delayed = self._keys.delayed(queue)

        def purge(client: redis.Redis) -> Any:
            with client.pipeline(transaction=True) as pipe:
                for key in self._keys.step_keys(queue):
                    pipe.llen(key)
                    pipe.delete(key)
                pipe.zcard(delayed)
                pipe.delete(delayed)
                pipe.zrem(self._keys.delayed_index, queue)
                return pipe.execute()

        replies = self._redis.run(f"purge {queue}", purge)
        return sum(int(n) for n in replies[0:-3:2]) + int(replies[-3])

    # -- rate limits ----------------------------------------------------------------

    def reserve_rate_slot(self, key: str, *, interval: float) -> float:
        return self._redis.reserve_rate_slot(
            key, prefix=self._keys.prefix, interval=interval, now=self.clock.time
        )


def _task_id(envelope: bytes) -> str | None:
    """The task id in a kombu envelope's headers, None if it cannot be read."""
    try:
        headers = orjson.loads(envelope).get("headers") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return None
    value = headers.get("id") if isinstance(headers, dict) else None
    return str(value) if value is not None else None


def _scripts() -> dict[str, str]:
    """The broker's Lua scripts, beside this module."""
    names = (
        "fetch",
        "restore",
        "extend",
        "replay",
        "unlock",
        "defer",
        "heartbeat",
        "claim",
        "forget",
        "publish_eta",
        "handoff",
    )
    return {name: load_script("celeriac.brokers.redis", f"{name}.lua") for name in names}
