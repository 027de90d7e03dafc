"""Celery's broadcast channels on RabbitMQ, declared exactly as kombu and Celery 5.7 do
(spec §4.1), so stock and celeriac processes share them without a 406:

  exchange <ns>.pidbox          fanout, not durable            commands
  queue    <node>.<ns>.pidbox   exclusive, auto-delete, x-message-ttl 300 s, x-expires 10 s
  exchange reply.<ns>.pidbox    direct, not durable            replies
  queue    <oid>.reply.<ns>.pidbox  exclusive, auto-delete, same arguments, key <oid>
  exchange celeryev             topic, durable                 events
  queue    celeryev.<uuid>      exclusive, auto-delete, x-message-ttl 5 s, x-expires 60 s

Two connections: one declares and consumes (used by one thread at a time), one
publishes (shared, behind a lock), so a thread waiting for commands never holds up an
event or a reply. Either is reopened on the next call after it fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
import weakref
from typing import TYPE_CHECKING, Any

import amqp

from celeriac.brokers.mailbox import Mailbox
from celeriac.connections.amqp import (
    KeepAlive,
    close_connection,
    keepalive_interval,
    open_connection,
    parse_amqp_url,
)
from celeriac.connections.amqp_transport import drain, drain_nowait
from celeriac.exceptions import BrokerConnectionError, BrokerError
from celeriac.protocol.message import Message

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["AMQPMailbox"]

logger = logging.getLogger(__name__)

# Celery's control_queue_ttl / control_queue_expires, event_queue_ttl / _expires (ms).
CONTROL_QUEUE_ARGUMENTS = {"x-message-ttl": 300_000, "x-expires": 10_000}
EVENT_QUEUE_ARGUMENTS = {"x-message-ttl": 5_000, "x-expires": 60_000}


# Every mailbox of this process, for the fork handler below.
_mailboxes: weakref.WeakSet[AMQPMailbox] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child must not keep the parent's connections alive through its copies
    # of their sockets.
    for mailbox in list(_mailboxes):
        mailbox.forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _message_of(raw: amqp.Message) -> Message:
    body = raw.body
    if isinstance(body, str):
        body = body.encode("utf-8")
    properties = raw.properties
    headers = properties.get("application_headers") or {}
    return Message(
        headers=dict(headers),
        body=bytes(body),
        properties={k: v for k, v in properties.items() if k != "application_headers"},
        content_type=str(properties.get("content_type") or ""),
        content_encoding=str(properties.get("content_encoding") or "utf-8"),
    )


class AMQPMailbox(Mailbox):
    """Commands, replies and events as Celery declares them on RabbitMQ."""

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
        # Heartbeats as the broker's own connections have them: the thread reading
        # commands ticks its connection, a keep-alive thread ticks the publishing one,
        # so a dead link is given up within about two heartbeats.
        self._params = parse_amqp_url(url, self.transport_options)
        self._keepalive: KeepAlive | None = None
        self._in: amqp.Connection | None = None
        self._in_channel: Any = None
        self._out: amqp.Connection | None = None
        self._out_channel: Any = None
        self._out_lock = threading.Lock()
        self._out_declared: set[str] = set()
        self._received: list[Message] = []
        self._reply_tags: dict[str, str] = {}
        # What the consuming connection must declare again after a reconnect.
        self._node: str | None = None
        self._event_key: str | None = None
        self._event_queue = f"celeryev.{uuid.uuid4()}"
        _mailboxes.add(self)

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's connections without touching them."""
        for connection in (self._in, self._out):
            transport = getattr(connection, "transport", None)
            sock = getattr(transport, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self._in = self._in_channel = self._out = self._out_channel = None
        self._out_lock = threading.Lock()
        self._keepalive = None
        self._received = []
        self._reply_tags = {}

    # -- connections --------------------------------------------------------------------

    def _inbound(self) -> Any:
        if self._in_channel is None:
            try:
                self._in, _ = open_connection(self._params)
                self._in_channel = self._in.channel()
            except Exception as exc:
                self._drop_in()
                raise BrokerConnectionError(f"cannot reach RabbitMQ: {exc}") from exc
            try:
                if self._node is not None:
                    self._declare_node(self._node)
                if self._event_key is not None:
                    self._declare_events(self._event_key)
            except Exception as exc:
                self._drop_in()
                raise BrokerConnectionError(f"cannot declare the queues: {exc}") from exc
        return self._in_channel

    def _drop_in(self) -> None:
        connection, self._in, self._in_channel = self._in, None, None
        close_connection(connection, polite=False)

    def _publish(self, exchange: str, routing_key: str, message: Message, **extra: Any) -> None:
        raw = amqp.Message(
            message.body,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            application_headers=message.headers,
            **extra,
        )
        kind, durable = self._exchange_kinds()[exchange]
        with self._out_lock:
            for attempt in range(2):
                try:
                    if self._out_channel is None:
                        self._out, _ = open_connection(self._params)
                        self._out_channel = self._out.channel()
                        self._out_declared = set()
                        self._start_keepalive()
                    if exchange not in self._out_declared:
                        # A publish to a missing exchange would close the channel.
                        self._out_channel.exchange_declare(
                            exchange, kind, durable=durable, auto_delete=False
                        )
                        self._out_declared.add(exchange)
                    self._out_channel.basic_publish(raw, exchange=exchange, routing_key=routing_key)
                    return
                except Exception as exc:
                    connection, self._out, self._out_channel = self._out, None, None
                    close_connection(connection, polite=False)
                    if attempt:
                        raise BrokerConnectionError(
                            f"cannot publish to {exchange!r} on RabbitMQ: {exc}"
                        ) from exc

    def _start_keepalive(self) -> None:
        if self._keepalive is None and self._params.heartbeat > 0:
            self._keepalive = KeepAlive(
                self._tick_out,
                interval=keepalive_interval(self._params.heartbeat),
                name="celeriac-broadcast-keepalive",
            )
            self._keepalive.start()

    def _exchange_kinds(self) -> dict[str, tuple[str, bool]]:
        return {
            self.exchange: ("fanout", False),
            self.reply_exchange: ("direct", False),
            self.event_exchange: ("topic", True),
        }

    def _run_in(self, what: str, operation: Any) -> Any:
        try:
            return operation(self._inbound())
        except BrokerConnectionError:
            raise
        except Exception as exc:
            self._drop_in()
            raise BrokerConnectionError(f"cannot {what} on RabbitMQ: {exc}") from exc

    def _tick_out(self) -> None:
        """Keep the publishing connection's heartbeats going; drop it once dead."""
        with self._out_lock:
            connection = self._out
            if connection is None:
                return
            try:
                drain_nowait(connection)
                connection.heartbeat_tick()
            except Exception as exc:
                logger.debug("Broadcast publishing link lost: %s", exc)
                self._out, self._out_channel = None, None
                close_connection(connection, polite=False)

    def _on_message(self, raw: amqp.Message) -> None:
        self._received.append(_message_of(raw))

    def _drain(self, timeout: float) -> list[Message]:
        if not self._received:

            def wait(channel: Any) -> None:
                assert self._in is not None
                drain(self._in, timeout)
                self._in.heartbeat_tick()

            self._run_in("receive", wait)
        found, self._received = self._received, []
        return found

    # -- client side --------------------------------------------------------------------

    def open_replies(self, oid: str) -> None:
        queue = self.reply_queue(oid)

        def declare(channel: Any) -> None:
            channel.exchange_declare(
                self.reply_exchange, "direct", durable=False, auto_delete=False
            )
            channel.queue_declare(
                queue,
                durable=False,
                exclusive=True,
                auto_delete=True,
                arguments=CONTROL_QUEUE_ARGUMENTS,
            )
            channel.queue_bind(queue, self.reply_exchange, oid)
            self._reply_tags[oid] = channel.basic_consume(
                queue, no_ack=True, callback=self._on_message
            )

        try:
            self._run_in("declare the reply queue", declare)
        except BrokerConnectionError:
            # A connection left idle since the last command may have been closed.
            self._run_in("declare the reply queue", declare)

    def publish_command(self, message: Message) -> None:
        self._publish(self.exchange, "", message, delivery_mode=2)

    def receive_replies(self, oid: str, *, timeout: float) -> list[Message]:
        return self._drain(timeout)

    def close_replies(self, oid: str) -> None:
        tag = self._reply_tags.pop(oid, None)
        if tag is None or self._in_channel is None:
            return
        queue = self.reply_queue(oid)

        def drop(channel: Any) -> None:
            channel.basic_cancel(tag)
            channel.queue_delete(queue)

        self._run_in("remove the reply queue", drop)
        self._received.clear()

    # -- worker side --------------------------------------------------------------------

    def _declare_node(self, node: str) -> None:
        channel = self._in_channel
        queue = self.node_queue(node)
        channel.exchange_declare(self.exchange, "fanout", durable=False, auto_delete=False)
        channel.queue_declare(
            queue,
            durable=False,
            exclusive=True,
            auto_delete=True,
            arguments=CONTROL_QUEUE_ARGUMENTS,
        )
        channel.queue_bind(queue, self.exchange, "")
        channel.basic_consume(queue, no_ack=True, callback=self._on_message)

    def listen(self, node: str) -> None:
        from amqp.exceptions import ResourceLocked

        self._node = node
        try:
            if self._in_channel is None:
                self._inbound()  # declares the node's queue
            else:
                self._run_in("listen for commands", lambda channel: self._declare_node(node))
        except BrokerConnectionError as exc:
            if isinstance(exc.__cause__, ResourceLocked):
                raise BrokerError(
                    f"another worker named {node} holds {self.node_queue(node)}: give each "
                    "worker its own node name (-n name@%h)"
                ) from exc
            raise

    def receive_commands(self, *, timeout: float) -> list[Message]:
        return self._drain(timeout)

    def reply(self, exchange: str, routing_key: str, message: Message) -> None:
        self._publish(exchange, routing_key, message, delivery_mode=1)

    # -- events -------------------------------------------------------------------------

    def publish_event(self, routing_key: str, message: Message) -> None:
        self._publish(self.event_exchange, routing_key, message, delivery_mode=1)

    def _declare_events(self, routing_key: str) -> None:
        channel = self._in_channel
        queue = self._event_queue
        channel.exchange_declare(self.event_exchange, "topic", durable=True, auto_delete=False)
        channel.queue_declare(
            queue, durable=False, exclusive=True, auto_delete=True, arguments=EVENT_QUEUE_ARGUMENTS
        )
        channel.queue_bind(queue, self.event_exchange, routing_key)
        channel.basic_consume(queue, no_ack=True, callback=self._on_message)

    def listen_events(self, routing_key: str = "#") -> None:
        self._event_key = routing_key
        if self._in_channel is None:
            self._inbound()
        else:
            self._run_in("listen for events", lambda channel: self._declare_events(routing_key))

    def receive_events(self, *, timeout: float) -> list[Message]:
        return self._drain(timeout)

    def close(self) -> None:
        keepalive, self._keepalive = self._keepalive, None
        if keepalive is not None:
            keepalive.stop()
        self._drop_in()
        with self._out_lock:
            connection, self._out, self._out_channel = self._out, None, None
        close_connection(connection)
