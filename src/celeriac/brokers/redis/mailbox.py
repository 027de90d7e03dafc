"""Celery's broadcast channels on Redis, as kombu's Redis transport lays them out (spec §2.7).

Keys and channels (each gets `global_keyprefix` in front, as kombu does):
  PUBLISH  /<db>.<ns>.pidbox                  commands (fanout: pub/sub)
  PUBLISH  /<db>.celeryev/<routing key>       events (fanout: pub/sub)
  _kombu.binding.reply.<ns>.pidbox            set of "<oid><sep><sep><oid>.reply.<ns>.pidbox"
  <oid>.reply.<ns>.pidbox                     list: a client's replies (LPUSH in, BRPOP out)

`/<db>.` is kombu's `fanout_prefix` (pub/sub ignores the database number); the transport
option `fanout_prefix` may name another one (a string) or none (False), as with kombu.
Pub/sub is fire-and-forget: a worker not subscribed at the moment a command is sent
never sees it, exactly as with kombu.
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from celeriac.brokers.mailbox import Mailbox
from celeriac.brokers.redis.envelope import encode_envelope
from celeriac.brokers.redis.keys import BINDING_PREFIX, DEFAULT_SEP
from celeriac.connections.redis import RedisClient, pool_options
from celeriac.exceptions import BrokerConnectionError, BrokerError, SerializationError
from celeriac.protocol.message import Message
from celeriac.protocol.serializers import json_loads

if TYPE_CHECKING:
    from collections.abc import Mapping

    import redis

__all__ = ["RedisMailbox", "decode_envelope"]

# Longest single BRPOP (the client's socket timeout must stay above it).
MAX_BLOCK = 1.0
# A subscription silent this long is PINGed; without an answer this much later it is
# given up as dead (a black-holed link never errors by itself).
PING_AFTER = 2.0
PONG_TIMEOUT = 3.0

# Every mailbox of this process, for the fork handler below.
_mailboxes: weakref.WeakSet[RedisMailbox] = weakref.WeakSet()


def _close_socket_copies(connections: Any) -> None:
    """Close this process's copies of inherited sockets (never shut them down: the
    parent still uses them)."""
    for connection in connections:
        sock = getattr(connection, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
            connection._sock = None


def _after_fork_in_child() -> None:
    # A forked child must not keep the parent's subscription alive: once the parent
    # drops a dead link, the child's copy of the socket would hold it open.
    for mailbox in list(_mailboxes):
        mailbox.forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def decode_envelope(raw: bytes | str) -> Message | None:
    """The message in a kombu JSON envelope; None if it cannot be read."""
    try:
        envelope = json_loads(raw)
    except SerializationError:
        return None
    if not isinstance(envelope, dict):
        return None
    properties = envelope.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    body = envelope.get("body")
    try:
        if properties.get("body_encoding") == "base64" and isinstance(body, str):
            data = base64.b64decode(body)
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:
            return None
    except ValueError:
        return None
    headers = envelope.get("headers")
    return Message(
        headers=headers if isinstance(headers, dict) else {},
        body=data,
        properties=properties,
        content_type=str(envelope.get("content-type") or ""),
        content_encoding=str(envelope.get("content-encoding") or "utf-8"),
    )


class RedisMailbox(Mailbox):
    """Commands and events over pub/sub, replies through kombu's direct-exchange lists."""

    def __init__(
        self,
        url: str,
        *,
        transport_options: Mapping[str, Any] | None = None,
        namespace: str = "celery",
        event_exchange: str = "celeryev",
    ) -> None:
        super().__init__(
            url,
            transport_options=transport_options,
            namespace=namespace,
            event_exchange=event_exchange,
        )
        options = self.transport_options
        self.prefix = str(options.get("global_keyprefix") or "")
        self.sep = str(options.get("sep", DEFAULT_SEP))
        fanout = options.get("fanout_prefix", True)
        if fanout is True:
            db = pool_options(url, options).get("db", 0)
            fanout = f"/{db}."
        self.fanout_prefix = str(fanout) if fanout else ""
        self._redis = RedisClient(
            url, options, scripts=dict, error=BrokerError, unreachable=BrokerConnectionError
        )
        self._pubsub: Any = None
        self._lock = threading.Lock()
        self._heard_at = time.monotonic()
        self._pinged_at: float | None = None
        _mailboxes.add(self)

    # -- names --------------------------------------------------------------------------

    def _topic(self, exchange: str, routing_key: str = "") -> str:
        topic = self.prefix + self.fanout_prefix + exchange
        return f"{topic}/{routing_key}" if routing_key else topic

    def _binding(self, exchange: str) -> str:
        return self.prefix + BINDING_PREFIX + exchange

    def _envelope(self, message: Message, exchange: str, routing_key: str) -> bytes:
        return encode_envelope(message, exchange=exchange, routing_key=routing_key, priority=0)

    # -- client side --------------------------------------------------------------------

    def open_replies(self, oid: str) -> None:
        member = f"{oid}{self.sep}{self.sep}{self.reply_queue(oid)}"
        key = self._binding(self.reply_exchange)
        self._redis.run("bind the reply queue", lambda client: client.sadd(key, member))

    def publish_command(self, message: Message) -> None:
        data = self._envelope(message, self.exchange, "")
        topic = self._topic(self.exchange)
        self._redis.run("publish a control command", lambda client: client.publish(topic, data))

    def receive_replies(self, oid: str, *, timeout: float) -> list[Message]:
        key = self.prefix + self.reply_queue(oid)
        deadline = time.monotonic() + timeout
        found: list[Message] = []

        def pop(client: redis.Redis) -> Any:
            left = deadline - time.monotonic()
            if left <= 0:
                return client.rpop(key)
            return client.brpop([key], timeout=min(MAX_BLOCK, max(0.01, left)))

        while True:
            item = self._redis.run("read control replies", pop)
            if item is None:
                if time.monotonic() >= deadline:
                    return found
                continue
            raw = item[1] if isinstance(item, list | tuple) else item
            message = decode_envelope(raw)
            if message is not None:
                found.append(message)
            # Whatever else is already there comes without waiting.
            deadline = min(deadline, time.monotonic())

    def close_replies(self, oid: str) -> None:
        member = f"{oid}{self.sep}{self.sep}{self.reply_queue(oid)}"
        binding = self._binding(self.reply_exchange)
        key = self.prefix + self.reply_queue(oid)

        def drop(client: redis.Redis) -> None:
            pipe = client.pipeline(transaction=False)
            pipe.srem(binding, member)
            pipe.delete(key)
            pipe.execute()

        self._redis.run("remove the reply queue", drop)

    # -- worker side --------------------------------------------------------------------

    def _subscribe(self, pattern: str) -> None:
        with self._lock:
            if self._pubsub is None:
                self._pubsub = self._redis.client().pubsub(ignore_subscribe_messages=True)
            self._heard_at = time.monotonic()
            self._pinged_at = None
            try:
                self._pubsub.psubscribe(pattern)
            except Exception as exc:  # redis-py errors: the server is away
                raise BrokerConnectionError(f"cannot subscribe to {pattern}: {exc}") from exc

    def listen(self, node: str) -> None:
        self._subscribe(self._topic(self.exchange))

    def _check_alive(self, pubsub: Any) -> None:
        now = time.monotonic()
        if self._pinged_at is not None and now - self._pinged_at > PONG_TIMEOUT:
            raise BrokerConnectionError(
                f"the broadcast subscription did not answer a PING within {PONG_TIMEOUT} s"
            )
        if self._pinged_at is None and now - self._heard_at > PING_AFTER:
            self._pinged_at = now
            pubsub.ping()

    def _receive(self, timeout: float) -> list[Message]:
        pubsub = self._pubsub
        if pubsub is None:
            time.sleep(timeout)
            return []
        found: list[Message] = []
        wait = timeout
        while True:
            try:
                self._check_alive(pubsub)
                item = pubsub.get_message(timeout=wait)
            except BrokerConnectionError:
                raise
            except Exception as exc:  # redis-py errors: the server is away
                raise BrokerConnectionError(f"lost the broadcast subscription: {exc}") from exc
            if item is None:
                return found
            self._heard_at = time.monotonic()
            self._pinged_at = None
            if item.get("type") in ("pmessage", "message"):
                message = decode_envelope(item["data"])
                if message is not None:
                    found.append(message)
            wait = 0.0

    def receive_commands(self, *, timeout: float) -> list[Message]:
        return self._receive(timeout)

    def reply(self, exchange: str, routing_key: str, message: Message) -> None:
        binding = self._binding(exchange)
        data = self._envelope(message, exchange, routing_key)
        sep = self.sep

        def send(client: redis.Redis) -> None:
            # kombu's direct exchange: every queue bound with this routing key.
            queues = []
            for member in client.smembers(binding):
                text = member.decode() if isinstance(member, bytes) else str(member)
                parts = text.split(sep)
                if len(parts) == 3 and parts[0] == routing_key:
                    queues.append(parts[2])
            for queue in queues:
                client.lpush(self.prefix + queue, data)

        self._redis.run("send a control reply", send)

    # -- events -------------------------------------------------------------------------

    def publish_event(self, routing_key: str, message: Message) -> None:
        data = self._envelope(message, self.event_exchange, routing_key)
        topic = self._topic(self.event_exchange, routing_key)
        self._redis.run("publish an event", lambda client: client.publish(topic, data))

    def listen_events(self, routing_key: str = "#") -> None:
        self._subscribe(self._topic(self.event_exchange, routing_key.replace("#", "*")))

    def receive_events(self, *, timeout: float) -> list[Message]:
        return self._receive(timeout)

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's connections without touching them."""
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            _close_socket_copies([pubsub.connection])
        if not self._redis.closed:
            pool = self._redis.pool()
            _close_socket_copies(
                [
                    *getattr(pool, "_available_connections", ()),
                    *getattr(pool, "_in_use_connections", ()),
                ]
            )
        self._lock = threading.Lock()
        self._redis = RedisClient(
            self.url,
            self.transport_options,
            scripts=dict,
            error=BrokerError,
            unreachable=BrokerConnectionError,
        )

    def close(self) -> None:
        with self._lock:
            pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):  # closing is best effort
                pubsub.close()
        self._redis.close()
