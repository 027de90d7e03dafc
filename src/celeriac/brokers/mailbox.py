"""Celery's broadcast channels on a broker: remote control commands, their replies, events.

kombu's pidbox layout (spec §5): commands go to the fanout exchange `<ns>.pidbox`
(`celery.pidbox`), which every worker listens on; replies go to the direct exchange
`reply.<ns>.pidbox` with the client's `oid` as routing key, into the client's queue
`<oid>.reply.<ns>.pidbox`; events go to `celeryev` (topic on RabbitMQ, fanout on Redis)
with the event type as routing key (`task-succeeded` -> `task.succeeded`).

A `Mailbox` moves `Message`s on those channels and knows nothing of what they say: the
command handlers are in `worker/control.py`, the client in `app/control.py`, events in
`worker/events.py` and `events.py`. One implementation per broker kind, each in its
broker package (SQLite: `sqlite_mailbox.py`, a table); `open_mailbox` picks it from the
URL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from celeriac._imports import scheme_of
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Mapping

    from celeriac.protocol.message import Message

__all__ = ["Mailbox", "open_mailbox", "pack", "supports_mailbox", "unpack"]

# scheme -> (module, class)
MAILBOX_SCHEMES: dict[str, tuple[str, str]] = {
    "redis": ("celeriac.brokers.redis.mailbox", "RedisMailbox"),
    "rediss": ("celeriac.brokers.redis.mailbox", "RedisMailbox"),
    "redis+socket": ("celeriac.brokers.redis.mailbox", "RedisMailbox"),
    "amqp": ("celeriac.brokers.amqp.mailbox", "AMQPMailbox"),
    "amqps": ("celeriac.brokers.amqp.mailbox", "AMQPMailbox"),
    "pyamqp": ("celeriac.brokers.amqp.mailbox", "AMQPMailbox"),
    "sqlite": ("celeriac.brokers.sqlite_mailbox", "SQLiteMailbox"),
}


class Mailbox(ABC):
    """The broadcast channels of one broker, for one process.

    Args:
        url: The broker URL.
        transport_options: The broker's transport options (key prefix, fanout prefix).
        namespace: Celery's `control_exchange` (`celery`).
        event_exchange: Celery's `event_exchange` (`celeryev`).
    """

    def __init__(
        self,
        url: str,
        *,
        transport_options: Mapping[str, Any] | None = None,
        namespace: str = "celery",
        event_exchange: str = "celeryev",
    ) -> None:
        self.url = url
        self.transport_options = dict(transport_options or {})
        self.namespace = namespace
        self.exchange = f"{namespace}.pidbox"
        self.reply_exchange = f"reply.{namespace}.pidbox"
        self.event_exchange = event_exchange

    def reply_queue(self, oid: str) -> str:
        """The queue replies to client `oid` land in."""
        return f"{oid}.{self.reply_exchange}"

    def node_queue(self, node: str) -> str:
        """The queue worker `node` reads commands from."""
        return f"{node}.{self.exchange}"

    # -- client side --------------------------------------------------------------------

    @abstractmethod
    def open_replies(self, oid: str) -> None:
        """Create (and bind) the reply queue of `oid` before a command is sent."""

    @abstractmethod
    def publish_command(self, message: Message) -> None:
        """Send a command to every listening worker."""

    @abstractmethod
    def receive_replies(self, oid: str, *, timeout: float) -> list[Message]:
        """Replies waiting for `oid`, waiting up to `timeout` seconds for the first."""

    @abstractmethod
    def close_replies(self, oid: str) -> None:
        """Remove the reply queue of `oid`."""

    # -- worker side --------------------------------------------------------------------

    @abstractmethod
    def listen(self, node: str) -> None:
        """Start receiving commands as worker `node`."""

    @abstractmethod
    def receive_commands(self, *, timeout: float) -> list[Message]:
        """Commands received, waiting up to `timeout` seconds for the first."""

    @abstractmethod
    def reply(self, exchange: str, routing_key: str, message: Message) -> None:
        """Send a reply where the command's `reply_to` says."""

    # -- events -------------------------------------------------------------------------

    @abstractmethod
    def publish_event(self, routing_key: str, message: Message) -> None:
        """Send one event message (one event or a list of them) to the event exchange."""

    @abstractmethod
    def listen_events(self, routing_key: str = "#") -> None:
        """Start receiving events whose routing key matches `routing_key`."""

    @abstractmethod
    def receive_events(self, *, timeout: float) -> list[Message]:
        """Event messages received, waiting up to `timeout` seconds for the first."""

    @abstractmethod
    def close(self) -> None:
        """Drop subscriptions and connections."""


def supports_mailbox(url: str) -> bool:
    """Whether remote control and events can travel over the broker at `url`."""
    return scheme_of(url) in MAILBOX_SCHEMES


def open_mailbox(
    url: str,
    *,
    transport_options: Mapping[str, Any] | None = None,
    namespace: str = "celery",
    event_exchange: str = "celeryev",
) -> Mailbox:
    """The mailbox for the broker at `url` (connects on first use).

    Raises:
        ImproperlyConfigured: the transport has no broadcast channel.
    """
    import importlib

    scheme = scheme_of(url)
    entry = MAILBOX_SCHEMES.get(scheme)
    if entry is None:
        raise ImproperlyConfigured(
            f"remote control and events need a Redis, RabbitMQ or SQLite broker; "
            f"{scheme}:// has no broadcast channel"
        )
    module = importlib.import_module(entry[0])
    cls: type[Mailbox] = getattr(module, entry[1])
    return cls(
        url,
        transport_options=transport_options,
        namespace=namespace,
        event_exchange=event_exchange,
    )


def pack(payload: Any, *, headers: dict[str, Any], serializer: str = "json") -> Message:
    """`payload` serialized as a broadcast message (command, reply or event)."""
    from celeriac.protocol.message import Message
    from celeriac.protocol.serializers import dumps

    body, content_type, content_encoding = dumps(payload, serializer)
    return Message(
        headers=headers,
        body=body,
        content_type=content_type,
        content_encoding=content_encoding,
    )


def unpack(message: Message, *, accept: frozenset[str]) -> Any:
    """The payload of a broadcast message.

    Raises:
        ContentDisallowed: its content type is not accepted.
        SerializationError: it does not decode.
    """
    from celeriac.protocol.serializers import loads

    return loads(message.body, message.content_type, accept=accept)
