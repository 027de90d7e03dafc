"""kombu's Redis envelope: how a message is written to a list and read back. Pure: no I/O.

An envelope is the JSON object kombu LPUSHes (`body` in base64, `content-type`,
`content-encoding`, `headers`, `properties` with `delivery_info`, `priority`,
`body_encoding` and `delivery_tag`); an `unacked` entry is `[envelope, exchange,
routing_key]`. What lives here: encoding, decoding into a `Delivery`, kombu's
redelivered flags, and the `Handle` a delivery keeps for its ack.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, final

import orjson

from celeriac.brokers.base import INVALID_ENVELOPE, Delivery, clamp_priority
from celeriac.exceptions import PublishError, SerializationError
from celeriac.protocol.message import Message
from celeriac.protocol.serializers import json_dumps, json_loads

__all__ = [
    "Handle",
    "encode_envelope",
    "envelope_of_entry",
    "held_of",
    "read_delivery",
    "read_unacked_entry",
    "redelivered_envelope",
    "without_redelivered",
]

logger = logging.getLogger(__name__)

# Properties that belong to the Redis envelope, not to the message.
_TRANSPORT_PROPERTIES = frozenset({"delivery_info", "body_encoding", "delivery_tag"})


@final
@dataclass(frozen=True, slots=True)
class Handle:
    """What ack/reject need beyond the tag: the envelope as stored, and whose lease."""

    envelope: bytes
    held_key: str


def held_of(delivery: Delivery, default: str) -> str:
    """The hash holding `delivery`'s lease (`default` for a delivery of another broker)."""
    handle = delivery.handle
    return handle.held_key if isinstance(handle, Handle) else default


def _json_default(value: Any) -> Any:
    # Header values JSON cannot carry natively (datetime, Decimal, UUID, bytes) travel
    # with kombu's type tags, exactly as kombu's own encoder writes them.
    return orjson.loads(json_dumps(value))


def encode_envelope(
    message: Message,
    *,
    exchange: str,
    routing_key: str,
    priority: int,
    tag: str | None = None,
) -> bytes:
    """`message` as kombu's JSON envelope, body in base64, with a new delivery tag
    unless `tag` is given.

    Raises:
        PublishError: a header cannot be encoded.
    """
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
        return orjson.dumps(envelope, default=_json_default, option=orjson.OPT_PASSTHROUGH_DATETIME)
    except (TypeError, SerializationError) as exc:
        raise PublishError(f"cannot encode the message envelope: {exc}") from exc


def read_delivery(raw: bytes, queue: str, tag: str, crashes: int, held_key: str) -> Delivery:
    """The delivery of envelope `raw` leased from `queue`; an envelope that cannot be read
    is handed out all the same, as an `INVALID_ENVELOPE` message, for the worker to
    dead-letter with a reason."""
    handle = Handle(raw, held_key)
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


def without_redelivered(message: Message) -> Message:
    """`message` without a `redelivered` header (itself when it has none)."""
    if "redelivered" not in message.headers:
        return message
    return Message(
        headers={k: v for k, v in message.headers.items() if k != "redelivered"},
        body=message.body,
        properties=message.properties,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
    )


def _flag_redelivered(envelope: dict[str, Any]) -> None:
    """Mark an envelope the way kombu marks a restored message."""
    headers = envelope.get("headers")
    properties = envelope.get("properties")
    if isinstance(headers, dict) and isinstance(properties, dict):
        info = properties.get("delivery_info")
        if isinstance(info, dict):
            headers["redelivered"] = True
            info["redelivered"] = True


def redelivered_envelope(raw: bytes) -> str | None:
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


def read_unacked_entry(entry: bytes) -> tuple[str, str, int, str] | None:
    """An `unacked` entry's exchange, routing key, priority (0-9) and envelope flagged
    redelivered; None when the entry cannot be read."""
    try:
        envelope, exchange, routing_key = json.loads(entry)
    except (ValueError, TypeError):
        return None
    if not isinstance(envelope, dict):
        return None
    _flag_redelivered(envelope)
    properties = envelope.get("properties")
    priority = properties.get("priority") if isinstance(properties, dict) else None
    try:
        level = clamp_priority(priority if isinstance(priority, int) else None)
    except (TypeError, ValueError):
        level = 0
    return str(exchange or ""), str(routing_key or ""), level, json.dumps(envelope)


def envelope_of_entry(entry: bytes) -> bytes:
    """The envelope of an `unacked` entry (the entry itself when it cannot be read)."""
    try:
        value = json.loads(entry)
        return json.dumps(value[0]).encode()
    except (ValueError, TypeError, IndexError, KeyError):
        return entry
