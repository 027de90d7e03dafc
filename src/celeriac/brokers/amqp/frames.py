"""`basic.publish` and `basic.ack` frames, encoded ahead of time so a batch goes out
in one write.

py-amqp writes each published message with its own `sendall` (and first reads the
socket for a `connection.blocked` notice), which dominates the cost of a batch. Here
the three AMQP 0-9-1 frames of a publish (method, content header, body) are built
byte-for-byte as py-amqp (and so Celery/kombu) would send them (the properties by
`table`), and all the frames of a batch are joined and written at once.
Encoding happens before anything is written: a value a field table cannot carry fails
the whole batch cleanly. Acks are the same: a worker whose tasks finish out of order acks
most deliveries one by one, and py-amqp writes each `basic.ack` with its own `sendall`.
"""

from __future__ import annotations

from struct import error as StructError
from struct import pack
from typing import TYPE_CHECKING

from amqp.exceptions import FrameSyntaxError
from amqp.serialization import dumps

from celeriac.brokers.amqp.message import check_headers
from celeriac.brokers.amqp.table import encode_properties
from celeriac.exceptions import SerializationError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from amqp import Message

__all__ = ["encode_acks", "encode_publish"]

# Frame types and the end-of-frame octet (AMQP 0-9-1 §4.2.3).
FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_END = b"\xce"
# basic.publish is class 60, method 40; its arguments: reserved short, exchange,
# routing key, mandatory and immediate bits.
BASIC_CLASS = 60
PUBLISH_METHOD = pack(">HH", 60, 40)
PUBLISH_ARGS = "Bssbb"
# basic.ack is class 60, method 80: delivery tag (longlong), then the multiple bit.
ACK = ">HHQB"


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END


def _publish_method(exchange: str, routing_key: str, mandatory: bool) -> bytes:
    exchange_name = exchange.encode("utf-8", "surrogatepass")
    key = routing_key.encode("utf-8", "surrogatepass")
    if len(exchange_name) > 255 or len(key) > 255:
        # py-amqp's error for a short string too long.
        args: bytes = dumps(PUBLISH_ARGS, (0, exchange, routing_key, mandatory, False))
        return PUBLISH_METHOD + args
    return b"".join(
        (
            PUBLISH_METHOD,
            b"\x00\x00",  # reserved
            pack(">B", len(exchange_name)),
            exchange_name,
            pack(">B", len(key)),
            key,
            b"\x01" if mandatory else b"\x00",  # mandatory, immediate bits
        )
    )


def encode_publish(
    channel: int,
    exchange: str,
    routing_key: str,
    message: Message,
    *,
    mandatory: bool,
    frame_max: int,
) -> bytes:
    """The frames of one `basic.publish` of `message` on `channel`.

    Raises:
        SerializationError: a property or header value cannot be encoded.
    """
    body = message.body
    if isinstance(body, str):
        body = body.encode(message.properties.get("content_encoding") or "utf-8")
    try:
        method = _publish_method(exchange, routing_key, mandatory)
        header = pack(">HHQ", BASIC_CLASS, 0, len(body)) + encode_properties(message.properties)
    except (ValueError, TypeError, StructError, OverflowError, FrameSyntaxError) as exc:
        # Name the culprit when it is a header (the usual case), else say what failed.
        check_headers(message.properties.get("application_headers") or {})
        raise SerializationError(f"cannot encode an AMQP message: {exc}") from exc
    parts = [_frame(FRAME_METHOD, channel, method), _frame(FRAME_HEADER, channel, header)]
    chunk = frame_max - 8  # frame header (7) and end octet (1)
    for start in range(0, len(body), chunk):
        parts.append(_frame(FRAME_BODY, channel, bytes(body[start : start + chunk])))
    return b"".join(parts)


def encode_acks(channel: int, acks: Iterable[tuple[int, bool]]) -> bytes:
    """The `basic.ack` frames of `acks` ((delivery tag, multiple) pairs) on `channel`."""
    return b"".join(
        _frame(FRAME_METHOD, channel, pack(ACK, BASIC_CLASS, 80, tag, multiple))
        for tag, multiple in acks
    )
