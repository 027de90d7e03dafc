"""A celeriac `Message` as an AMQP message and back; how dead letters are marked.

Mapping (what stock Celery/kombu write, spec §4.2): the body travels raw; content
type and encoding in their own AMQP fields; the protocol headers as the AMQP field
table (None as void, lists as arrays, dicts as tables); `correlation_id`, `reply_to`,
`delivery_mode`, `priority`, `expiration` (and any other basic property given) as
basic properties.

A dead letter is a copy of the message with `celeriac-dead-letter-*` headers (id,
reason, origin queue, time, exchange, routing key) and no `expiration`, so it cannot
expire in the dead-letter queue.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import amqp

from celeriac._time import UTC, from_iso, to_iso
from celeriac.brokers.base import DeadLetter
from celeriac.brokers.dead_letter_limits import DeadLetterLimits
from celeriac.exceptions import SerializationError
from celeriac.protocol.message import Message

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from celeriac.brokers.amqp.inbound import Received
    from celeriac.brokers.base import Delivery

__all__ = [
    "PROPERTY_NAMES",
    "check_headers",
    "dead_letter_copy",
    "from_amqp",
    "read_dead_letter",
    "to_amqp",
]

# Basic properties carried between `Message.properties` and AMQP (content type,
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
# Headers RabbitMQ adds when it dead-letters; removed from messages that only passed
# through our delay ladder (they grow with every hop and mean nothing to a task).
DEATH_HEADERS = (
    "x-death",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-last-death-exchange",
)
# Headers of a dead letter (plain names: RabbitMQ reserves the x- prefix).
DL_ID = "celeriac-dead-letter-id"
DL_REASON = "celeriac-dead-letter-reason"
DL_QUEUE = "celeriac-dead-letter-queue"
DL_TIME = "celeriac-dead-letter-time"
DL_EXCHANGE = "celeriac-dead-letter-exchange"
DL_ROUTING_KEY = "celeriac-dead-letter-routing-key"
DL_BODY_SIZE = "celeriac-dead-letter-body-size"
DL_HEADERS = (DL_ID, DL_REASON, DL_QUEUE, DL_TIME, DL_EXCHANGE, DL_ROUTING_KEY, DL_BODY_SIZE)
# Field-table integers are signed 64-bit at most.
_INT64 = 2**63


def basic_properties(message: Message, *, priority: int | None = None) -> dict[str, Any]:
    """The message's basic properties, persistent unless it says otherwise."""
    properties = {
        name: value
        for name in PROPERTY_NAMES
        if (value := message.properties.get(name)) is not None
    }
    properties.setdefault("delivery_mode", 2)
    if priority is not None:
        # AMQP priority is one octet; RabbitMQ caps it at the queue's x-max-priority.
        properties["priority"] = max(0, min(255, int(priority)))
    return properties


def to_amqp(
    message: Message,
    properties: Mapping[str, Any],
    *,
    headers: Mapping[str, Any] | None = None,
) -> amqp.Message:
    """An AMQP message with `message`'s body, content type, encoding and headers."""
    return amqp.Message(
        message.body,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        application_headers=dict(headers) if headers is not None else message.headers,
        **properties,
    )


def from_amqp(message: Received, *, strip_death: Callable[[str], bool]) -> Message:
    """The celeriac `Message` of a received AMQP message.

    `strip_death(queue)` says whether dead-lettering bookkeeping that started in
    `queue` is ours (the delay ladder) and is dropped.
    """
    props = message.properties
    # The delivery's own table (made for it alone): taken, not copied.
    headers = props.get("application_headers")
    if headers is None:
        headers = {}
    first_death = headers.get("x-first-death-queue")
    if isinstance(first_death, str) and strip_death(first_death):
        headers = {k: v for k, v in headers.items() if k not in DEATH_HEADERS}
    return Message(
        headers=headers,
        body=message.body,
        properties={name: props[name] for name in PROPERTY_NAMES if name in props},
        # kombu treats a message without a content type as raw data.
        content_type=props.get("content_type") or "application/data",
        content_encoding=props.get("content_encoding") or "binary",
    )


def check_headers(headers: Mapping[str, Any]) -> None:
    """Refuse header values an AMQP field table cannot carry, before anything is sent.

    Raises:
        SerializationError: names the header and the value's type.
    """
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


def dead_letter_copy(
    delivery: Delivery,
    *,
    reason: str,
    now: float,
    limits: DeadLetterLimits | None = None,
) -> amqp.Message:
    """The dead-letter queue's copy of `delivery`, marked with why and where from; its
    body cut to `limits.body_max` and expiring after `limits.ttl` (a per-message TTL:
    the queue's arguments stay as existing deployments declared them)."""
    limits = limits or DeadLetterLimits()
    message, body_size = limits.trim(delivery.message)
    headers = dict(message.headers)
    if body_size is not None:
        headers[DL_BODY_SIZE] = body_size
    headers.update(
        {
            DL_ID: uuid.uuid4().hex,
            DL_REASON: reason,
            DL_QUEUE: delivery.queue,
            DL_TIME: to_iso(datetime.fromtimestamp(now, UTC)),
            DL_EXCHANGE: delivery.exchange,
            DL_ROUTING_KEY: delivery.routing_key,
        }
    )
    properties = basic_properties(message)
    # The original's TTL would drop the dead letter at once; ours is the store's.
    properties.pop("expiration", None)
    if limits.ttl is not None:
        properties["expiration"] = str(int(limits.ttl * 1000))
    properties["delivery_mode"] = 2
    return to_amqp(message, properties, headers=headers)


def read_dead_letter(message: amqp.Message) -> DeadLetter:
    """A `DeadLetter` from a message of the dead-letter queue (its marks removed)."""
    props = message.properties
    headers = dict(props.get("application_headers") or {})
    dead_id = headers.pop(DL_ID, None)
    reason = headers.pop(DL_REASON, None)
    if reason is None and headers.get("x-first-death-reason"):
        # Moved here by RabbitMQ itself (a quorum queue's delivery limit, say).
        reason = f"RabbitMQ dead-lettered it: {headers['x-first-death-reason']}"
        if headers["x-first-death-reason"] == "delivery_limit":
            reason += " (returned to its queue more times than x-delivery-limit allows)"
    queue = headers.pop(DL_QUEUE, None) or headers.get("x-first-death-queue") or ""
    when = headers.pop(DL_TIME, None)
    headers.pop(DL_EXCHANGE, None)
    headers.pop(DL_ROUTING_KEY, None)
    body_size = headers.pop(DL_BODY_SIZE, None)
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
        queue=str(queue),
        reason=str(reason or "unknown"),
        message=Message(
            headers=headers,
            body=body,
            properties={name: props[name] for name in PROPERTY_NAMES if name in props},
            content_type=props.get("content_type") or "application/data",
            content_encoding=props.get("content_encoding") or "binary",
        ),
        failed_at=failed_at or datetime.fromtimestamp(0, UTC),
        body_size=body_size if isinstance(body_size, int) else None,
    )
