"""Our pre-encoded basic.publish frames are byte-for-byte what py-amqp writes."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import amqp
import pytest
from amqp import spec
from amqp.method_framing import frame_writer
from amqp.serialization import dumps

from celeriac.brokers.amqp.frames import encode_acks, encode_publish
from celeriac.exceptions import SerializationError
from celeriac.protocol.codec import TaskCall, encode_task


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))


class _Connection:
    def __init__(self, frame_max: int) -> None:
        self.frame_max = frame_max
        self.bytes_sent = 0


def py_amqp_bytes(
    channel: int, exchange: str, key: str, message: amqp.Message, *, mandatory: bool, frame_max: int
) -> bytes:
    transport = _Transport()
    write = frame_writer(_Connection(frame_max), transport)
    args = dumps("Bssbb", (0, exchange, key, mandatory, False))
    write(1, channel, spec.Basic.Publish, args, message)
    return b"".join(transport.written)


def celery_like(body_size: int = 0) -> amqp.Message:
    call = TaskCall(
        name="proj.add",
        id=str(uuid.uuid4()),
        args=[2, "x" * body_size],
        kwargs={"k": None},
        priority=5,
        reply_to=str(uuid.uuid4()),
        expires=datetime.now(timezone.utc) + timedelta(seconds=60),
        headers={"nested": [1, {"a": None, "b": [True, 2.5]}], "big": 2**40},
    )
    message = encode_task(call)
    return amqp.Message(
        message.body,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        application_headers=message.headers,
        **{k: v for k, v in message.properties.items() if v is not None},
    )


@pytest.mark.parametrize("body_size", [0, 5000, 300_000])
@pytest.mark.parametrize("mandatory", [True, False])
@pytest.mark.parametrize(("exchange", "key"), [("", "celery"), ("tâches.direct", "clé.x")])
def test_frames_match_py_amqp(body_size: int, mandatory: bool, exchange: str, key: str) -> None:
    message = celery_like(body_size)
    frame_max = 131072
    ours = encode_publish(7, exchange, key, message, mandatory=mandatory, frame_max=frame_max)
    theirs = py_amqp_bytes(7, exchange, key, message, mandatory=mandatory, frame_max=frame_max)
    assert ours == theirs


def test_a_value_a_table_cannot_carry_is_a_serialization_error_naming_it() -> None:
    message = amqp.Message(b"{}", application_headers={"odd": {1, 2}})
    with pytest.raises(SerializationError, match="'odd'"):
        encode_publish(1, "", "q", message, mandatory=False, frame_max=131072)


def test_a_routing_key_over_255_bytes_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError):
        encode_publish(1, "", "q" * 300, amqp.Message(b""), mandatory=False, frame_max=131072)


@pytest.mark.parametrize(("tag", "multiple"), [(1, False), (2**40 + 5, True)])
def test_ack_frames_match_py_amqp(tag: int, multiple: bool) -> None:
    transport = _Transport()
    write = frame_writer(_Connection(131072), transport)
    write(1, 3, spec.Basic.Ack, dumps("Lb", (tag, multiple)), None)
    assert encode_acks(3, [(tag, multiple)]) == b"".join(transport.written)


def test_acks_are_joined_in_order() -> None:
    acks = [(9, True), (12, False), (15, False)]
    assert encode_acks(1, acks) == b"".join(encode_acks(1, [ack]) for ack in acks)
