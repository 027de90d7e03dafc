"""RabbitMQ broker (`amqp://`, `amqps://`, `pyamqp://`), wire-compatible with Celery 5.

Entity layout (the same as Celery's, so stock workers and producers share it):

- each queue `Q`: durable, not auto-delete, not exclusive, arguments only when
  configured (`x-max-priority` from the transport options `max_priority` /
  `queue_arguments`); a durable direct exchange named `Q`, bound to `Q` with routing
  key `Q` (Celery's `Queue(Q, Exchange(Q, "direct"), routing_key=Q)`);
- tasks go to the default exchange `""` with routing key = `Q`, persistent
  (delivery_mode 2), the protocol headers as an AMQP field table (nulls as void),
  the body raw, and Celery's properties (content type and encoding, priority,
  correlation_id, reply_to, expiration);
- ETA messages wait in a per-queue delay ladder (`delay.py`), then land in `Q`
  like any other message, so a stock worker consuming `Q` gets them when due;
- dead letters: one durable queue (transport option `dead_letter_queue`, default
  `celeriac.dead_letter`), each message carrying `celeriac-dead-letter-*` headers.

Publishing uses publisher confirms (`publish` returns once RabbitMQ has the message)
on pooled connections (`publisher.py`, `link.py`); consuming uses one connection per broker
object (`consumer.py`). Both reconnect with backoff after an outage and declare
again. Leases do not lapse: RabbitMQ holds an unacked message while the consumer's
connection lives and requeues it (redelivered) when the connection goes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

from celeriac.brokers.amqp.consumer import Consumer
from celeriac.brokers.amqp.delay import DEFAULT_DELAY_PREFIX, LEVELS, DelayLayout
from celeriac.brokers.amqp.layout import DEFAULT_DELIVERY_LIMIT, EntityLayout, check_name
from celeriac.brokers.amqp.link import Link, Outbound
from celeriac.brokers.amqp.message import (
    basic_properties,
    dead_letter_copy,
    from_amqp,
    read_dead_letter,
    to_amqp,
)
from celeriac.brokers.amqp.publisher import Publisher
from celeriac.brokers.base import Broker, DeadLetter, Delivery, Outgoing
from celeriac.connections.amqp import (
    KeepAlive,
    is_channel_error,
    keepalive_interval,
    parse_amqp_url,
)
from celeriac.exceptions import BrokerError, ImproperlyConfigured, PublishError

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator, Sequence
    from datetime import datetime

    import amqp

    from celeriac.brokers.amqp.inbound import Received
    from celeriac.protocol.message import Message

__all__ = ["AMQPBroker"]

logger = logging.getLogger(__name__)

# Transport option defaults.
DEFAULT_DEAD_LETTER_QUEUE = "celeriac.dead_letter"
DEFAULT_CONFIRM_TIMEOUT = 30.0
DEFAULT_PUBLISH_RETRY_TIMEOUT = 10.0
DEFAULT_POOL_LIMIT = 10
# Waits before looking for a dead letter again that a scan missed (see _find_dead_letter).
REPLAY_RESCANS = (0.05, 0.2, 0.5)
DEFAULT_RETRY_INTERVAL_MAX = 5.0


class AMQPBroker(Broker):
    """Celery-compatible RabbitMQ transport.

    Transport options (all optional):
        heartbeat: seconds (default 120, Celery's `broker_heartbeat`; 0 disables).
        connect_timeout: seconds per connection attempt (default 4).
        ssl: True or a dict (`ca_certs`, `certfile`, `keyfile`, `cert_reqs`,
            `server_hostname`, ...), as Celery's `broker_use_ssl`.
        max_priority: `x-max-priority` for every queue declared (Celery's
            `task_queue_max_priority`; default none).
        queue_arguments: `{queue: {argument: value}}`, e.g. per-queue
            `{"x-max-priority": 10}` (Celery's `Queue(queue_arguments=...)`).
        exchange_types: `{exchange: "direct" | "topic" | "fanout"}`, the type a named
            exchange is declared with (set from `task_queues`; default direct).
        dead_letter_queue: name of the dead-letter queue.
        delay_prefix: name prefix of the delay ladder (default `celeriac.delay`).
        delay_threshold: ETAs closer than this many seconds are published at once with
            their `eta` header for the worker to hold (default 0: every future ETA
            waits on the broker).
        confirm_timeout: seconds to wait for a publisher confirm (default 30).
        publish_retry_timeout: seconds a publish keeps reconnecting before it gives up
            (default 10).
        pool_limit: publishing connections per broker object (default 10).
        retry_interval_max: longest pause between reconnection attempts (default 5).
        consumer_timeout: seconds RabbitMQ >= 3.12 waits for an ack before it closes
            the channel (per-consumer `x-consumer-timeout`; older servers ignore it and
            use the server-wide `consumer_timeout`, 30 min by default).
        keepalive: run the keep-alive thread that sends heartbeats for connections
            nobody reads (default True; without it, call `extend` while tasks run).
    """

    schemes: ClassVar[tuple[str, ...]] = ("amqp", "amqps", "pyamqp")
    supports_priority: ClassVar[bool] = True
    higher_priority_first: ClassVar[bool] = True
    supports_native_delay: ClassVar[bool] = True
    supports_rate_limit: ClassVar[bool] = False
    supports_leases: ClassVar[bool] = False
    supports_recover: ClassVar[bool] = False
    # The delay ladder rounds up to 100 ms steps.
    delay_precision: ClassVar[float] = 0.15

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        opts = self.transport_options
        self._params = parse_amqp_url(url, opts)
        try:
            confirm_timeout = float(opts.get("confirm_timeout", DEFAULT_CONFIRM_TIMEOUT))
            retry_timeout = float(opts.get("publish_retry_timeout", DEFAULT_PUBLISH_RETRY_TIMEOUT))
            retry_interval_max = float(opts.get("retry_interval_max", DEFAULT_RETRY_INTERVAL_MAX))
            self._delay_threshold = float(opts.get("delay_threshold", 0.0))
            pool_limit = int(opts.get("pool_limit", DEFAULT_POOL_LIMIT))
            max_priority = opts.get("max_priority")
            max_priority = int(max_priority) if max_priority is not None else None
            limit = opts.get("delivery_limit", DEFAULT_DELIVERY_LIMIT)
            delivery_limit = int(limit) if limit is not None else None
            consumer_timeout = opts.get("consumer_timeout")
            consume_arguments = (
                {"x-consumer-timeout": int(float(consumer_timeout) * 1000)}
                if consumer_timeout is not None
                else None
            )
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"invalid AMQP transport option: {exc}") from exc
        queue_arguments = opts.get("queue_arguments") or {}
        if not isinstance(queue_arguments, dict) or not all(
            isinstance(v, dict) for v in queue_arguments.values()
        ):
            raise ImproperlyConfigured(
                "transport option queue_arguments must map queue names to dicts of "
                "AMQP arguments, e.g. {'tasks': {'x-max-priority': 10}}"
            )
        self._delay = DelayLayout(str(opts.get("delay_prefix") or DEFAULT_DELAY_PREFIX))
        self._layout = EntityLayout(
            max_priority=max_priority,
            queue_arguments=queue_arguments,
            exchange_types=dict(opts.get("exchange_types") or {}),
            dead_letter_queue=str(opts.get("dead_letter_queue") or DEFAULT_DEAD_LETTER_QUEUE),
            delay=self._delay,
            queue_type=str(opts.get("queue_type") or "classic"),
            delivery_limit=delivery_limit,
        )
        self.dead_letter_queue = self._layout.dead_letter_queue
        self._publisher = Publisher(
            self._params,
            layout=self._layout,
            delay=self._delay,
            confirm_timeout=confirm_timeout,
            retry_timeout=retry_timeout,
            retry_interval_max=retry_interval_max,
            pool_limit=pool_limit,
            on_heartbeat=self._ensure_keepalive,
            count=self._count,
        )
        self._consumer = Consumer(
            self._params,
            declare=self._layout.declare_queue,
            retry_interval_max=retry_interval_max,
            consume_arguments=consume_arguments,
            global_qos=not self._layout.has_quorum_queues,
        )
        self._use_keepalive = bool(opts.get("keepalive", True))
        self._keepalive: KeepAlive | None = None
        self._state_lock = threading.Lock()
        self._stats_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    def connect(self) -> None:
        """Open one publishing connection now, so that a wrong URL fails here."""
        self._publisher.run(lambda link: None)
        logger.debug("connected to RabbitMQ at %s", self.safe_url())

    def _ensure_keepalive(self, heartbeat: float) -> None:
        """Start the keep-alive thread once a connection told us its heartbeat."""
        if self._keepalive is not None or heartbeat <= 0 or not self._use_keepalive:
            return
        with self._state_lock:
            if self._keepalive is None:
                self._keepalive = KeepAlive(
                    self._keep_alive, interval=keepalive_interval(heartbeat), name="celeriac-amqp"
                )
                self._keepalive.start()

    def close(self) -> None:
        """Close every connection; unacked deliveries go back to their queues. The
        broker reconnects if it is used again."""
        with self._state_lock:
            keepalive, self._keepalive = self._keepalive, None
        if keepalive is not None:
            keepalive.stop()
        self._consumer.close()
        self._publisher.close()

    def _keep_alive(self) -> None:
        self._consumer.keep_alive()
        self._publisher.pool.tick_idle()

    # -- declarations --------------------------------------------------------------------

    def queue_arguments(self, queue: str) -> dict[str, Any] | None:
        """The AMQP arguments `queue` is declared with (None: plain classic queue)."""
        return self._layout.queue_arguments(queue)

    def declare(self, queue: str) -> None:
        need = self._layout.queue(queue)
        self._publisher.run(
            lambda link: self._layout.ensure(link, need), what=f"declare queue {queue!r}"
        )

    def declare_binding(self, queue: str, *, exchange: str, routing_key: str) -> None:
        needs = (self._layout.queue(queue), self._layout.bind(exchange, queue, routing_key))

        def declare(link: Link) -> None:
            for need in needs:
                self._layout.ensure(link, need)

        self._publisher.run(declare, what=f"bind queue {queue!r} to exchange {exchange!r}")

    # -- publishing ----------------------------------------------------------------------

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
        item = self._outbound(message, queue, eta, priority, exchange, routing_key)
        self._publisher.publish([item])

    def publish_many(self, items: Sequence[Outgoing]) -> None:
        """Publish every item, then wait once for all their confirms."""
        if not items:
            return
        prepared = [
            self._outbound(i.message, i.queue, i.eta, i.priority, i.exchange, i.routing_key)
            for i in items
        ]
        self._publisher.publish(prepared)

    def _outbound(
        self,
        message: Message,
        queue: str,
        eta: datetime | None,
        priority: int | None,
        exchange: str,
        routing_key: str | None,
    ) -> Outbound:
        check_name(queue, "queue")
        properties = basic_properties(message, priority=priority)
        label = message.task_id or ""
        layout = self._layout
        delay = None if eta is None else eta.timestamp() - self.clock.time()
        if delay is not None and delay > self._delay_threshold:
            self._delay.check_queue(queue)
            route = self._delay.route(queue, delay)
            # The `expiration` TTL would run inside the ladder and push the message on
            # early; the worker checks the `expires` header when it arrives instead
            # (as with Celery, where an ETA task waits unacked in the worker).
            properties.pop("expiration", None)
            return Outbound(
                exchange=route.exchange,
                routing_key=route.routing_key,
                message=to_amqp(message, properties),
                mandatory=True,
                needs=(layout.queue(queue), layout.ladder(queue)),
                label=label,
            )
        if exchange:
            key = routing_key if routing_key is not None else queue
            return Outbound(
                exchange=exchange,
                routing_key=key,
                message=to_amqp(message, properties),
                # Celery compat: a named exchange drops what it cannot route.
                mandatory=False,
                needs=(layout.queue(queue), layout.bind(exchange, queue, key)),
                label=label,
            )
        return Outbound(
            exchange="",
            routing_key=queue,
            message=to_amqp(message, properties),
            mandatory=True,
            needs=(layout.queue(queue),),
            label=label,
        )

    # -- consuming -----------------------------------------------------------------------

    def receive(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[Delivery]:
        """Up to `limit` more deliveries from `queues`, waiting up to `timeout` seconds.

        `limit` is how many more messages the caller can take now: the channel's
        prefetch window is what the caller holds unacked plus `limit`.
        """
        try:
            raw = self._consumer.receive(queues, limit=limit, timeout=timeout)
        except (BrokerError, ImproperlyConfigured):
            raise
        except Exception as exc:
            raise self._publisher.map_error(exc, "consume") from exc
        if self._keepalive is None:
            self._ensure_keepalive(self._consumer.negotiated_heartbeat)
        if not raw:
            return []
        deliveries = [self._delivery(queue, msg, generation) for queue, msg, generation in raw]
        self._count("_received", len(deliveries))
        return deliveries

    def _delivery(self, queue: str, message: Received, generation: int) -> Delivery:
        tag = message.delivery_tag
        return Delivery(
            message=from_amqp(message, strip_death=self._delay.owns),
            queue=queue,
            tag=f"{generation}.{tag}",
            exchange=message.exchange,
            routing_key=message.routing_key,
            redelivered=message.redelivered,
            handle=(generation, tag),
        )

    def ack(self, delivery: Delivery) -> None:
        self.ack_many([delivery])

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack in as few frames as correct: runs with nothing else unacked below them
        go as one `basic.ack(multiple=True)`."""
        for generation, tags in _by_generation(deliveries):
            done = self._consumer.ack(generation, tags)
            self._count("_acked", done)
            if done < len(tags):
                _log_lost(deliveries, "ack")

    def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        generation, tag = delivery.handle
        done = self._consumer.reject(generation, [tag], requeue=requeue)
        self._count("_rejected", 1)
        if not done:
            _log_lost([delivery], "reject")

    def stop_consuming(self) -> None:
        # Cancel first: a message rejected with requeue while its consumer is still
        # subscribed goes straight back to that same consumer.
        self._consumer.stop()

    def requeue_many(self, deliveries: Sequence[Delivery]) -> None:
        for generation, tags in _by_generation(deliveries):
            self._consumer.reject(generation, tags, requeue=True)
            self._count("_rejected", len(tags))

    def extend(self, deliveries: Sequence[Delivery], *, seconds: float) -> None:
        """Keep the consumer connection alive while tasks run (heartbeats).

        RabbitMQ leases never lapse while the connection lives, so there is nothing to
        renew; but a process busy with a long task reads nothing from its connection,
        and RabbitMQ closes a connection that misses heartbeats (and with it requeues
        the running task). Safe to call from any thread; call it at least every
        heartbeat / 2 seconds (the broker's own keep-alive thread does so too).
        """
        self._consumer.keep_alive()

    def recover(
        self,
        consumer_id: str,
        *,
        running: Collection[str] = (),
        discard: Collection[str] = (),
    ) -> int:
        """Nothing to do: RabbitMQ requeues a dead consumer's messages itself when its
        connection closes (`supports_recover` is False)."""
        return 0

    # -- dead letters --------------------------------------------------------------------

    def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        """Publish a copy to the dead-letter queue (confirmed), then ack the original."""
        message = delivery.message
        item = Outbound(
            exchange="",
            routing_key=self.dead_letter_queue,
            message=dead_letter_copy(
                delivery, reason=reason, now=self.clock.time(), limits=self.dead_letter_limits
            ),
            mandatory=True,
            needs=(self._layout.DEAD_LETTERS,),
            label=message.task_id or "",
        )
        self._publisher.publish([item])
        self.ack(delivery)
        self._count("_dead_lettered", 1)
        logger.warning(
            "dead-lettered message %s from queue %r: %s",
            message.task_id or delivery.tag,
            delivery.queue,
            reason,
        )
        self._cap_dead_letters()

    def _cap_dead_letters(self) -> None:
        """Drop the oldest dead letters past `dead_letter_max`.

        Done here rather than with `x-max-length`: a queue's arguments cannot change
        once it exists (RabbitMQ refuses the declaration), and existing deployments
        have the dead-letter queue without one.
        """
        cap = self.dead_letter_limits.max_count
        if cap is None:
            return

        def op(link: Link) -> int:
            self._layout.ensure(link, self._layout.DEAD_LETTERS)
            admin = link.admin()
            _, count, _ = admin.queue_declare(self.dead_letter_queue, passive=True)
            dropped = 0
            for _ in range(max(0, count - cap)):
                message = admin.basic_get(self.dead_letter_queue, no_ack=True)
                if message is None:
                    break
                dropped += 1
            return dropped

        try:
            dropped = self._publisher.run(op, what="cap the dead letters")
        except Exception as exc:  # isolation boundary: the next dead letter tries again
            logger.warning("cannot cap the dead letters now: %s", exc)
            return
        if dropped:
            logger.info("dropped the %d oldest dead letter(s) past dead_letter_max", dropped)

    def list_dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest `limit` dead letters, left in place.

        AMQP cannot peek: they are fetched unacked and returned to the queue when the
        fetching channel closes, so they stay in order for everyone else.
        """

        def op(link: Link) -> list[DeadLetter]:
            found = [
                read_dead_letter(msg)
                for msg in self._fetch_dead_letters(link, limit=limit, stop=lambda _m: False)
            ]
            link.reset_admin()
            return found

        return self._publisher.run(op, what="list dead letters")

    def replay_dead_letter(self, dead_letter_id: str) -> bool:
        """Publish a dead letter to its queue again (confirmed), then remove it."""

        def op(link: Link) -> bool:
            # The scan keeps what it passed unacked on the admin channel; resetting
            # that channel puts them back in order.
            try:
                found = self._find_dead_letter(link, dead_letter_id)
                if found is None:
                    return False
                dead = read_dead_letter(found)
                if dead.body_size is not None:
                    raise BrokerError(
                        f"dead letter {dead_letter_id} cannot be replayed: only the first "
                        f"{len(dead.message.body)} of its {dead.body_size} bytes were kept"
                    )
                item = self._outbound(dead.message, dead.queue, None, None, "", None)
                for need in item.needs:
                    self._layout.ensure(link, need)
                if link.publish_all([item], timeout=self._publisher.confirm_timeout):
                    raise PublishError(f"RabbitMQ could not route the replay to {dead.queue!r}")
                self._count("_published", 1)
                link.admin().basic_ack(found.delivery_info["delivery_tag"])
                return True
            finally:
                link.reset_admin()

        return self._publisher.run(op, what="replay a dead letter")

    def _find_dead_letter(self, link: Link, dead_letter_id: str) -> amqp.Message | None:
        """The dead letter `dead_letter_id`, fetched unacked on the admin channel.

        Messages an earlier scan left unacked go back to the queue when its channel
        closes, but RabbitMQ puts them back asynchronously: a scan started at once can
        miss them. A miss is therefore looked for again, after short waits.
        """
        for wait in (*REPLAY_RESCANS, None):
            hits = self._fetch_dead_letters(
                link, limit=None, stop=lambda m: read_dead_letter(m).id == dead_letter_id
            )
            if hits and read_dead_letter(hits[-1]).id == dead_letter_id:
                return hits[-1]
            if wait is None:
                return None
            link.reset_admin()
            time.sleep(wait)
        return None

    def _fetch_dead_letters(
        self, link: Link, *, limit: int | None, stop: Callable[[amqp.Message], bool]
    ) -> list[amqp.Message]:
        self._layout.ensure(link, self._layout.DEAD_LETTERS)
        admin = link.admin()
        fetched: list[amqp.Message] = []
        while limit is None or len(fetched) < limit:
            message = admin.basic_get(self.dead_letter_queue, no_ack=False)
            if message is None:
                break
            fetched.append(message)
            if stop(message):
                break
        return fetched

    def purge_dead_letters(self) -> int:
        def op(link: Link) -> int:
            self._layout.ensure(link, self._layout.DEAD_LETTERS)
            return int(link.channel.queue_purge(self.dead_letter_queue) or 0)

        return self._publisher.run(op, what="purge dead letters")

    def dead_letter_count(self) -> int:
        """The dead-letter queue's ready count (no fetch: listing would redeliver them)."""
        return self._publisher.run(
            lambda link: self._passive_count(link, self.dead_letter_queue) or 0,
            what="count dead letters",
        )

    # -- queues --------------------------------------------------------------------------

    def size(self, queue: str) -> int:
        """Messages waiting in `queue`, including its delayed ones (not the unacked)."""
        return self._publisher.run(lambda link: sum(self._counts(link, queue)), what="size a queue")

    def _counts(self, link: Link, queue: str) -> Iterator[int]:
        yield self._passive_count(link, queue) or 0
        if self._passive_count(link, self._delay.out_queue(queue)) is not None:
            for level in range(LEVELS):
                yield self._passive_count(link, self._delay.level_queue(queue, level)) or 0

    @staticmethod
    def _passive_count(link: Link, name: str) -> int | None:
        try:
            ok = link.admin().queue_declare(name, passive=True)
        except Exception as exc:
            if is_channel_error(exc) and getattr(exc, "reply_code", 0) == 404:
                link.reset_admin()
                return None
            raise
        return int(ok.message_count)

    def purge(self, queue: str) -> int:
        """Delete every waiting message of `queue`, delayed ones included."""

        def op(link: Link) -> int:
            total = 0
            names = [queue]
            if self._passive_count(link, self._delay.out_queue(queue)) is not None:
                names.extend(self._delay.level_queue(queue, k) for k in range(LEVELS))
            for name in names:
                if self._passive_count(link, name) is None:
                    continue
                total += int(link.admin().queue_purge(name) or 0)
            return total

        return self._publisher.run(op, what="purge a queue")

    def delete_queue(self, queue: str) -> int:
        """Delete `queue`, its exchange and its delay ladder; return the messages lost.

        An admin operation (Celery's `celery amqp queue.delete`); consumers of the queue
        are cancelled by RabbitMQ.
        """

        def op(link: Link) -> int:
            admin = link.admin()
            lost = 0
            for name in [queue, *self._delay.queues_of(queue)]:
                lost += int(admin.queue_delete(name) or 0)
            admin.exchange_delete(queue)
            link.declared.clear()
            return lost

        lost = self._publisher.run(op, what=f"delete queue {queue!r}")
        self._layout.declared_queues.discard(queue)
        return lost

    @property
    def declared_queues(self) -> frozenset[str]:
        """The queues this broker object declared (publishing or consuming)."""
        return frozenset(self._layout.declared_queues)

    # -- stats ---------------------------------------------------------------------------

    def _count(self, counter: str, n: int) -> None:
        if n:
            with self._stats_lock:
                setattr(self, counter, getattr(self, counter) + n)


# -- helpers -------------------------------------------------------------------------------


def _by_generation(deliveries: Sequence[Delivery]) -> list[tuple[int, list[int]]]:
    groups: dict[int, list[int]] = {}
    for delivery in deliveries:
        generation, tag = delivery.handle
        groups.setdefault(generation, []).append(tag)
    return list(groups.items())


def _log_lost(deliveries: Sequence[Delivery], what: str) -> None:
    ids = ", ".join(d.message.task_id or d.tag for d in deliveries[:5])
    logger.warning(
        "could not %s %s: its RabbitMQ connection was lost, so RabbitMQ has requeued "
        "the message and will deliver it again",
        what,
        ids,
    )
