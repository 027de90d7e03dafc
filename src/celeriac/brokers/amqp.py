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
- ETA messages wait in a per-queue delay ladder (`amqp_delay.py`), then land in `Q`
  like any other message, so a stock worker consuming `Q` gets them when due;
- dead letters: one durable queue (transport option `dead_letter_queue`, default
  `celeriac.dead_letter`), each message carrying `celeriac-dead-letter-*` headers.

Publishing uses publisher confirms (`publish` returns once RabbitMQ has the message)
on pooled connections (`amqp_link.py`); consuming uses one connection per broker
object (`amqp_consumer.py`). Both reconnect with backoff after an outage and declare
again. Leases do not lapse: RabbitMQ holds an unacked message while the consumer's
connection lives and requeues it (redelivered) when the connection goes.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import uuid
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import amqp

from celeriac._amqp import (
    Backoff,
    KeepAlive,
    is_channel_error,
    is_connection_error,
    is_permanent_refusal,
    keepalive_interval,
    parse_amqp_url,
)
from celeriac._time import UTC, from_iso, to_iso
from celeriac.brokers.amqp_consumer import Consumer
from celeriac.brokers.amqp_delay import DEFAULT_DELAY_PREFIX, LEVELS, DelayLayout
from celeriac.brokers.amqp_link import Link, LinkLost, LinkPool, Outbound
from celeriac.brokers.base import Broker, DeadLetter, Delivery, Outgoing
from celeriac.exceptions import (
    BrokerConnectionError,
    BrokerError,
    ImproperlyConfigured,
    PublishError,
    SerializationError,
)
from celeriac.protocol.message import Message

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Hashable, Iterator, Sequence

    from celeriac.brokers.amqp_link import Returned

__all__ = ["AMQPBroker"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# -- layout ------------------------------------------------------------------------------
DEFAULT_DEAD_LETTER_QUEUE = "celeriac.dead_letter"
# Headers a dead letter carries (plain names: RabbitMQ reserves the x- prefix).
DL_ID = "celeriac-dead-letter-id"
DL_REASON = "celeriac-dead-letter-reason"
DL_QUEUE = "celeriac-dead-letter-queue"
DL_TIME = "celeriac-dead-letter-time"
DL_EXCHANGE = "celeriac-dead-letter-exchange"
DL_ROUTING_KEY = "celeriac-dead-letter-routing-key"
DL_HEADERS = (DL_ID, DL_REASON, DL_QUEUE, DL_TIME, DL_EXCHANGE, DL_ROUTING_KEY)
# Headers RabbitMQ adds when it dead-letters; removed from messages that only passed
# through our delay ladder (they would grow with every hop and mean nothing to a task).
DEATH_HEADERS = (
    "x-death",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-last-death-exchange",
)
# Basic properties carried between `Message.properties` and AMQP (content type and
# encoding and headers travel in their own fields).
PROPERTY_NAMES = (
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
)
# Transport option defaults.
DEFAULT_CONFIRM_TIMEOUT = 30.0
DEFAULT_PUBLISH_RETRY_TIMEOUT = 10.0
DEFAULT_POOL_LIMIT = 10
DEFAULT_RETRY_INTERVAL_MAX = 5.0
# Field-table integers are signed 64-bit at most.
_INT64 = 2**63
_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)'")


class AMQPBroker(Broker):
    """Celery-compatible RabbitMQ transport.

    Transport options (all optional):
        heartbeat: seconds (default 120, Celery's `broker_heartbeat`; 0 disables).
        connect_timeout: seconds per connection attempt (default 4).
        ssl: True, an `ssl.SSLContext` or a dict (`ca_certs`, `certfile`, `keyfile`,
            `cert_reqs`, `server_hostname`), as Celery's `broker_use_ssl`.
        max_priority: `x-max-priority` for every queue declared (Celery's
            `task_queue_max_priority`; default none).
        queue_arguments: `{queue: {argument: value}}`, e.g. per-queue
            `{"x-max-priority": 10}` (Celery's `Queue(queue_arguments=...)`).
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

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        opts = self.transport_options
        self._params = parse_amqp_url(url, opts)
        try:
            self._confirm_timeout = float(opts.get("confirm_timeout", DEFAULT_CONFIRM_TIMEOUT))
            self._retry_timeout = float(
                opts.get("publish_retry_timeout", DEFAULT_PUBLISH_RETRY_TIMEOUT)
            )
            self._retry_interval_max = float(
                opts.get("retry_interval_max", DEFAULT_RETRY_INTERVAL_MAX)
            )
            self._delay_threshold = float(opts.get("delay_threshold", 0.0))
            pool_limit = int(opts.get("pool_limit", DEFAULT_POOL_LIMIT))
            max_priority = opts.get("max_priority")
            self._max_priority = int(max_priority) if max_priority is not None else None
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
        self._queue_arguments: dict[str, dict[str, Any]] = queue_arguments
        self.dead_letter_queue = str(opts.get("dead_letter_queue") or DEFAULT_DEAD_LETTER_QUEUE)
        self._delay = DelayLayout(str(opts.get("delay_prefix") or DEFAULT_DELAY_PREFIX))
        self._pool = LinkPool(self._new_link, limit=pool_limit)
        self._consumer = Consumer(
            self._params,
            declare=self._declare_on,
            retry_interval_max=self._retry_interval_max,
        )
        self._host_index = 0
        self._use_keepalive = bool(opts.get("keepalive", True))
        self._keepalive: KeepAlive | None = None
        self._state_lock = threading.Lock()
        self._stats_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    def connect(self) -> None:
        """Open one publishing connection now, so that a wrong URL fails here."""
        self._with_link(lambda link: None)
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
        self._pool.close()

    def _new_link(self) -> Link:
        link = Link(self._params, start=self._host_index)
        self._host_index = link.host_index
        self._ensure_keepalive(float(link.connection.heartbeat or 0))
        return link

    def _keep_alive(self) -> None:
        self._consumer.keep_alive()
        self._pool.tick_idle()

    # -- errors ------------------------------------------------------------------------

    def _map_error(self, exc: BaseException, what: str) -> BrokerError | ImproperlyConfigured:
        if is_permanent_refusal(exc):
            return BrokerConnectionError(
                f"RabbitMQ at {self._params.describe(self._host_index)} refused the "
                f"connection ({exc}): check the user, password and vhost permissions"
            )
        if is_connection_error(exc):
            return BrokerConnectionError(
                f"cannot reach RabbitMQ at {self._params.describe(self._host_index)} "
                f"to {what}: {exc}"
            )
        return BrokerError(f"RabbitMQ refused to {what}: {exc}")

    def _with_link(self, op: Callable[[Link], T], *, what: str = "connect") -> T:
        """Run `op` on a pooled link, reconnecting with backoff for up to
        `publish_retry_timeout` seconds when the connection fails."""
        deadline = time.monotonic() + self._retry_timeout
        backoff = Backoff(maximum=self._retry_interval_max)
        while True:
            try:
                link = self._pool.acquire(timeout=self._retry_timeout)
            except BrokerError:
                raise
            except Exception as exc:
                self._retry_or_raise(exc, what, deadline, backoff)
                continue
            broken = False
            try:
                return op(link)
            except (BrokerError, ImproperlyConfigured, SerializationError):
                raise
            except Exception as exc:
                if is_connection_error(exc):
                    broken = True
                    self._pool.discard_idle()
                    self._retry_or_raise(exc, what, deadline, backoff)
                    continue
                if is_channel_error(exc):
                    self._reset_channels(link)
                raise self._map_error(exc, what) from exc
            finally:
                self._pool.release(link, broken=broken)

    def _retry_or_raise(
        self,
        exc: BaseException,
        what: str,
        deadline: float,
        backoff: Backoff,
        *,
        in_doubt: int = 0,
    ) -> None:
        """Sleep before the next attempt, or raise if retrying cannot help or the time
        is up. `in_doubt` counts messages sent whose confirm the connection lost."""
        if is_permanent_refusal(exc) or not is_connection_error(exc):
            raise self._map_error(exc, what) from exc
        delay = backoff.next_delay()
        if time.monotonic() + delay > deadline:
            where = self._params.describe(self._host_index)
            if in_doubt:
                raise PublishError(
                    f"the connection to RabbitMQ at {where} failed before it confirmed "
                    f"{in_doubt} message(s), and they could not be sent again within "
                    f"{self._retry_timeout:g} s ({exc}): they may or may not have been queued"
                ) from exc
            raise BrokerConnectionError(
                f"cannot reach RabbitMQ at {where} to {what} after retrying for "
                f"{self._retry_timeout:g} s: {exc}"
            ) from exc
        logger.warning(
            "RabbitMQ connection failed (%s) while trying to %s; retrying in %.1f s",
            exc,
            what,
            delay,
        )
        self._host_index += 1
        time.sleep(delay)

    @staticmethod
    def _reset_channels(link: Link) -> None:
        try:
            link.reset_channel()
            link.reset_admin()
        except Exception:  # the connection is checked on next use
            logger.debug("error resetting channels", exc_info=True)

    # -- declarations --------------------------------------------------------------------

    def queue_arguments(self, queue: str) -> dict[str, Any] | None:
        """The AMQP arguments `queue` is declared with (None: plain classic queue)."""
        args = dict(self._queue_arguments.get(queue) or {})
        # Celery compat: task_queue_max_priority applies only where none is set.
        if "x-max-priority" not in args and self._max_priority is not None:
            args["x-max-priority"] = self._max_priority
        return args or None

    def _declare_on(self, channel: amqp.Channel, queue: str) -> None:
        """Declare `queue` as Celery does: its direct exchange, the queue, the binding."""
        _check_name(queue, "queue")
        try:
            channel.exchange_declare(queue, "direct", durable=True, auto_delete=False)
        except Exception as exc:
            _raise_inequivalent(exc, "exchange", queue)
            raise
        try:
            channel.queue_declare(
                queue,
                durable=True,
                exclusive=False,
                auto_delete=False,
                arguments=self.queue_arguments(queue),
            )
        except Exception as exc:
            _raise_inequivalent(exc, "queue", queue)
            raise
        channel.queue_bind(queue, exchange=queue, routing_key=queue)

    def _ensure(self, link: Link, need: Hashable) -> None:
        if need in link.declared:
            return
        assert isinstance(need, tuple)
        kind = need[0]
        channel = link.channel
        if kind == "queue":
            self._declare_on(channel, need[1])
        elif kind == "dead-letters":
            channel.queue_declare(
                self.dead_letter_queue, durable=True, exclusive=False, auto_delete=False
            )
        elif kind == "bind":
            _, exchange, queue, routing_key = need
            self._bind_exchange(link, exchange, queue, routing_key)
        elif kind == "ladder-exchanges":
            self._declare_ladder_exchanges(channel)
        elif kind == "ladder":
            self._ensure(link, ("ladder-exchanges",))
            self._declare_ladder(channel, need[1])
        else:  # pragma: no cover - internal invariant
            raise AssertionError(f"unknown declaration {need!r}")
        link.declared.add(need)

    def _bind_exchange(self, link: Link, exchange: str, queue: str, routing_key: str) -> None:
        # A named exchange that exists keeps its type; a missing one is created as
        # Celery would (a durable direct exchange).
        _check_name(exchange, "exchange")
        admin = link.admin()
        try:
            admin.exchange_declare(exchange, "direct", passive=True)
        except Exception as exc:
            if not is_channel_error(exc):
                raise
            link.reset_admin()
            link.channel.exchange_declare(exchange, "direct", durable=True, auto_delete=False)
        link.channel.queue_bind(queue, exchange=exchange, routing_key=routing_key)

    def _declare_ladder_exchanges(self, channel: amqp.Channel) -> None:
        layout = self._delay
        # nowait: one round trip for the whole ladder; the final synchronous declare
        # surfaces any error RabbitMQ raised on the way (it closes the channel).
        for level in range(LEVELS):
            channel.exchange_declare(
                layout.exchange(level), "topic", durable=True, auto_delete=False, nowait=True
            )
        for destination, source, key in layout.exchange_bindings():
            channel.exchange_bind(destination, source, key, nowait=True)
        channel.exchange_declare(layout.exchange(0), "topic", passive=True)

    def _declare_ladder(self, channel: amqp.Channel, queue: str) -> None:
        for name, arguments, exchange, key in self._delay.queue_declarations(queue):
            channel.queue_declare(
                name,
                durable=True,
                exclusive=False,
                auto_delete=False,
                arguments=arguments,
                nowait=True,
            )
            channel.queue_bind(name, exchange=exchange, routing_key=key, nowait=True)
        channel.queue_declare(self._delay.out_queue(queue), passive=True)

    def declare(self, queue: str) -> None:
        need = ("queue", queue)
        self._with_link(lambda link: self._ensure(link, need), what=f"declare queue {queue!r}")

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
        self._publish([item])

    def publish_many(self, items: Sequence[Outgoing]) -> None:
        """Publish every item, then wait once for all their confirms."""
        if not items:
            return
        prepared = [
            self._outbound(i.message, i.queue, i.eta, i.priority, i.exchange, i.routing_key)
            for i in items
        ]
        self._publish(prepared)

    def _outbound(
        self,
        message: Message,
        queue: str,
        eta: datetime | None,
        priority: int | None,
        exchange: str,
        routing_key: str | None,
    ) -> Outbound:
        _check_name(queue, "queue")
        properties: dict[str, Any] = {}
        for name in PROPERTY_NAMES:
            value = message.properties.get(name)
            if value is not None:
                properties[name] = value
        properties.setdefault("delivery_mode", 2)
        if priority is not None:
            # AMQP priority is one octet; RabbitMQ caps it at the queue's x-max-priority.
            properties["priority"] = max(0, min(255, int(priority)))
        _check_headers(message.headers)
        label = message.task_id or ""
        delay = None
        if eta is not None:
            delay = eta.timestamp() - self.clock.time()
            if delay <= self._delay_threshold:
                delay = None
        if delay is not None:
            self._delay.check_queue(queue)
            route = self._delay.route(queue, delay)
            # The `expiration` TTL would run inside the ladder and push the message on
            # early; the worker checks the `expires` header when it arrives instead
            # (as with Celery, where an ETA task waits unacked in the worker).
            properties.pop("expiration", None)
            return Outbound(
                exchange=route.exchange,
                routing_key=route.routing_key,
                message=amqp.Message(
                    message.body,
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    application_headers=message.headers,
                    **properties,
                ),
                mandatory=True,
                needs=(("queue", queue), ("ladder", queue)),
                label=label,
            )
        amqp_message = amqp.Message(
            message.body,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            application_headers=message.headers,
            **properties,
        )
        if exchange:
            key = routing_key if routing_key is not None else queue
            return Outbound(
                exchange=exchange,
                routing_key=key,
                message=amqp_message,
                # Celery compat: a named exchange drops what it cannot route.
                mandatory=False,
                needs=(("queue", queue), ("bind", exchange, queue, key)),
                label=label,
            )
        return Outbound(
            exchange="",
            routing_key=queue,
            message=amqp_message,
            mandatory=True,
            needs=(("queue", queue),),
            label=label,
        )

    def _publish(self, items: list[Outbound]) -> None:
        """Publish with confirms; on a lost connection publish the unconfirmed ones
        again on a new connection (a duplicate is possible, a loss is not)."""
        pending = items
        deadline = time.monotonic() + self._retry_timeout
        backoff = Backoff(maximum=self._retry_interval_max)
        resent_returns = False
        in_doubt = 0
        while pending:
            try:
                link = self._pool.acquire(timeout=self._retry_timeout)
            except BrokerError:
                raise
            except Exception as exc:
                self._retry_or_raise(exc, "publish", deadline, backoff, in_doubt=in_doubt)
                continue
            broken = False
            try:
                for item in pending:
                    for need in item.needs:
                        self._ensure(link, need)
                returned = link.publish_all(pending, timeout=self._confirm_timeout)
                self._count("_published", len(pending) - len(returned))
                pending = []
                if returned:
                    if resent_returns:
                        names = ", ".join(sorted({r.routing_key for r in returned})[:5])
                        raise PublishError(
                            f"RabbitMQ could not route {len(returned)} message(s) to "
                            f"{names} even after declaring the queue again"
                        )
                    # The queue vanished since we declared it: declare again, resend.
                    resent_returns = True
                    pending = [self._resend(link, r) for r in returned]
            except LinkLost as lost:
                broken = True
                pending = lost.unconfirmed
                in_doubt = len(pending)
                self._pool.discard_idle()
                self._retry_or_raise(lost.cause, "publish", deadline, backoff, in_doubt=in_doubt)
            except (BrokerError, ImproperlyConfigured, SerializationError):
                raise
            except Exception as exc:
                if is_connection_error(exc):
                    # Lost while declaring: nothing of this batch was sent on it.
                    broken = True
                    self._pool.discard_idle()
                    self._retry_or_raise(exc, "publish", deadline, backoff, in_doubt=in_doubt)
                    continue
                if is_channel_error(exc):
                    self._reset_channels(link)
                    if getattr(exc, "reply_code", 0) == 404:
                        raise PublishError(f"RabbitMQ refused the message: {exc}") from exc
                raise self._map_error(exc, "publish") from exc
            finally:
                self._pool.release(link, broken=broken)

    def _resend(self, link: Link, returned: Returned) -> Outbound:
        if returned.exchange:
            queue = self._delay.target_of(returned.routing_key) or returned.routing_key
            needs: tuple[Hashable, ...] = (("queue", queue), ("ladder", queue))
        else:
            queue = returned.routing_key
            needs = (("queue", queue),)
        for need in needs:
            link.declared.discard(need)
        logger.warning("queue %r was missing on RabbitMQ: declared it again", queue)
        return Outbound(
            exchange=returned.exchange,
            routing_key=returned.routing_key,
            message=returned.message,
            mandatory=True,
            needs=needs,
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
            raise self._map_error(exc, "consume") from exc
        if self._keepalive is None:
            self._ensure_keepalive(self._consumer.negotiated_heartbeat)
        if not raw:
            return []
        deliveries = [self._delivery(queue, msg, generation) for queue, msg, generation in raw]
        self._count("_received", len(deliveries))
        return deliveries

    def _delivery(self, queue: str, message: amqp.Message, generation: int) -> Delivery:
        info = message.delivery_info
        props = message.properties
        headers = dict(props.get("application_headers") or {})
        first_death = headers.get("x-first-death-queue")
        if isinstance(first_death, str) and self._delay.owns(first_death):
            for name in DEATH_HEADERS:
                headers.pop(name, None)
        body = message.body
        if isinstance(body, str):  # pragma: no cover - channels never auto-decode
            body = body.encode(props.get("content_encoding") or "utf-8")
        tag = info["delivery_tag"]
        return Delivery(
            message=Message(
                headers=headers,
                body=bytes(body),
                properties={name: props[name] for name in PROPERTY_NAMES if name in props},
                # kombu treats a message without a content type as raw data.
                content_type=props.get("content_type") or "application/data",
                content_encoding=props.get("content_encoding") or "binary",
            ),
            queue=queue,
            tag=f"{generation}.{tag}",
            exchange=info.get("exchange", ""),
            routing_key=info.get("routing_key", ""),
            redelivered=bool(info.get("redelivered")),
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
        headers = dict(message.headers)
        headers.update(
            {
                DL_ID: uuid.uuid4().hex,
                DL_REASON: reason,
                DL_QUEUE: delivery.queue,
                DL_TIME: to_iso(datetime.fromtimestamp(self.clock.time(), UTC)),
                DL_EXCHANGE: delivery.exchange,
                DL_ROUTING_KEY: delivery.routing_key,
            }
        )
        properties = {
            name: value
            for name, value in message.properties.items()
            if name in PROPERTY_NAMES and value is not None and name != "expiration"
        }
        properties["delivery_mode"] = 2
        item = Outbound(
            exchange="",
            routing_key=self.dead_letter_queue,
            message=amqp.Message(
                message.body,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                application_headers=headers,
                **properties,
            ),
            mandatory=True,
            needs=(("dead-letters",),),
            label=message.task_id or "",
        )
        self._publish([item])
        self.ack(delivery)
        self._count("_dead_lettered", 1)
        logger.warning(
            "dead-lettered message %s from queue %r: %s",
            message.task_id or delivery.tag,
            delivery.queue,
            reason,
        )

    def list_dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest `limit` dead letters, left in place.

        AMQP cannot peek: they are fetched unacked and returned to the queue when the
        fetching channel closes, so they stay in order for everyone else.
        """

        def op(link: Link) -> list[DeadLetter]:
            found = [
                _dead_letter_of(msg)
                for msg in self._fetch_dead_letters(link, limit=limit, stop=lambda _m: False)
            ]
            link.reset_admin()
            return found

        return self._with_link(op, what="list dead letters")

    def replay_dead_letter(self, dead_letter_id: str) -> bool:
        """Publish a dead letter to its queue again (confirmed), then remove it."""

        def op(link: Link) -> bool:
            # The scan keeps what it passed unacked on the admin channel; resetting
            # that channel puts them back in order.
            try:
                hits = self._fetch_dead_letters(
                    link, limit=None, stop=lambda m: _dead_letter_of(m).id == dead_letter_id
                )
                if not hits or _dead_letter_of(hits[-1]).id != dead_letter_id:
                    return False
                found = hits[-1]
                dead = _dead_letter_of(found)
                item = self._outbound(dead.message, dead.queue, None, None, "", None)
                for need in item.needs:
                    self._ensure(link, need)
                if link.publish_all([item], timeout=self._confirm_timeout):
                    raise PublishError(f"RabbitMQ could not route the replay to {dead.queue!r}")
                self._count("_published", 1)
                link.admin().basic_ack(found.delivery_info["delivery_tag"])
                return True
            finally:
                link.reset_admin()

        return self._with_link(op, what="replay a dead letter")

    def _fetch_dead_letters(
        self, link: Link, *, limit: int | None, stop: Callable[[amqp.Message], bool]
    ) -> list[amqp.Message]:
        self._ensure(link, ("dead-letters",))
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
            self._ensure(link, ("dead-letters",))
            return int(link.channel.queue_purge(self.dead_letter_queue) or 0)

        return self._with_link(op, what="purge dead letters")

    # -- queues --------------------------------------------------------------------------

    def size(self, queue: str) -> int:
        """Messages waiting in `queue`, including its delayed ones (not the unacked)."""
        return self._with_link(lambda link: sum(self._counts(link, queue)), what="size a queue")

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

        return self._with_link(op, what="purge a queue")

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


def _check_name(name: str, what: str) -> None:
    if not name or len(name.encode()) > 255:
        raise ImproperlyConfigured(f"{what} name {name!r} must be 1 to 255 bytes long")


def _raise_inequivalent(exc: BaseException, kind: str, name: str) -> None:
    """Turn RabbitMQ's 406 on a re-declaration into a clear ImproperlyConfigured."""
    if not is_channel_error(exc) or getattr(exc, "reply_code", 0) != 406:
        return
    text = str(getattr(exc, "reply_text", "") or exc)
    match = _INEQUIVALENT.search(text)
    argument = match.group(1) if match else "flags"
    hint = (
        "set the same value for this queue (transport options max_priority / "
        "queue_arguments, as the existing declaration), or delete the queue"
        if kind == "queue"
        else "use a different exchange name, or delete the exchange"
    )
    raise ImproperlyConfigured(
        f"{kind} {name!r} already exists on RabbitMQ with a different {argument!r} than "
        f"this app declares ({text}); {hint}"
    ) from exc


def _check_headers(headers: dict[str, Any]) -> None:
    """Refuse header values an AMQP field table cannot carry, before anything is sent."""
    for key, value in headers.items():
        if not isinstance(key, str):
            raise SerializationError(f"message header names must be strings, got {key!r}")
        _check_value(value, key)


def _check_value(value: Any, where: str) -> None:
    if value is None or isinstance(value, str | bytes | bool | float | Decimal | datetime):
        return
    if isinstance(value, int):
        if -_INT64 <= value < _INT64:
            return
        raise SerializationError(f"header {where!r}: integer {value} does not fit in 64 bits")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise SerializationError(f"header {where!r}: table keys must be strings")
            _check_value(item, f"{where}.{key}")
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_value(item, where)
        return
    raise SerializationError(
        f"header {where!r}: a {type(value).__name__} cannot be sent in an AMQP field table"
    )


def _dead_letter_of(message: amqp.Message) -> DeadLetter:
    props = message.properties
    headers = dict(props.get("application_headers") or {})
    dead_id = headers.pop(DL_ID, None)
    reason = headers.pop(DL_REASON, None)
    queue = headers.pop(DL_QUEUE, None)
    when = headers.pop(DL_TIME, None)
    headers.pop(DL_EXCHANGE, None)
    headers.pop(DL_ROUTING_KEY, None)
    body = message.body if isinstance(message.body, bytes) else bytes(message.body)
    if not isinstance(dead_id, str):
        # Not ours (someone else's message in the queue): a stable id from its content.
        dead_id = hashlib.sha1(body, usedforsecurity=False).hexdigest()
    try:
        failed_at = from_iso(when) if isinstance(when, str) else None
    except ValueError:
        failed_at = None
    return DeadLetter(
        id=dead_id,
        queue=str(queue or props.get("application_headers", {}).get("x-first-death-queue", "")),
        reason=str(reason or "unknown"),
        message=Message(
            headers=headers,
            body=body,
            properties={name: props[name] for name in PROPERTY_NAMES if name in props},
            content_type=props.get("content_type") or "application/data",
            content_encoding=props.get("content_encoding") or "binary",
        ),
        failed_at=failed_at or datetime.fromtimestamp(0, UTC),
    )
