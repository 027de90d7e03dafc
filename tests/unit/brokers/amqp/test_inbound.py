"""Deliveries read from the frames give what py-amqp gives, and what they leave is py-amqp's.

The frames are real AMQP 0-9-1 bytes (a `basic.deliver` as RabbitMQ sends it) written
into one end of a socket pair and read by the buffered transport on the other end; the
same bytes also go through py-amqp's own frame handler and channel, and both results
are compared.
"""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING, Any

import amqp
import pytest
from amqp.method_framing import frame_handler
from amqp.serialization import decode_properties_basic
from hypothesis import given
from hypothesis import strategies as st

from celeriac.brokers.amqp.frames import encode_publish
from celeriac.brokers.amqp.inbound import (
    DeliveryReader,
    Received,
    decode_properties,
    received_from,
)
from celeriac.brokers.amqp.table import encode_properties
from celeriac.connections.amqp_transport import BufferedTCPTransport
from tests.unit.brokers.amqp.test_table import py_amqp
from tests.unit.worker.test_admit_fuzz import amqp_value

if TYPE_CHECKING:
    from collections.abc import Iterator

CHANNEL = 1
CONSUMER_TAG = "amq.ctag-1"
TASK_HEADERS: dict[str, Any] = {
    "lang": "py",
    "task": "proj.add",
    "id": "6a1c",
    "shadow": None,
    "eta": None,
    "retries": 0,
    "timelimit": [None, None],
    "argsrepr": "(2, 2)",
    "ignore_result": False,
    "stamps": {},
}
TASK_PROPERTIES: dict[str, Any] = {
    "content_type": "application/json",
    "content_encoding": "utf-8",
    "application_headers": TASK_HEADERS,
    "delivery_mode": 2,
    "priority": 0,
    "correlation_id": "6a1c",
    "reply_to": "d3f1",
}


def _short(text: str) -> bytes:
    data = text.encode()
    return bytes([len(data)]) + data


def deliver_frames(
    tag: int,
    body: bytes,
    properties: dict[str, Any] | None = None,
    *,
    redelivered: bool = False,
    routing_key: str = "celery",
    frame_max: int = 131072,
    channel: int = CHANNEL,
) -> bytes:
    """The frames of one `basic.deliver` as RabbitMQ writes them."""
    message = amqp.Message(body, **(TASK_PROPERTIES if properties is None else properties))
    published = encode_publish(
        channel, "", routing_key, message, mandatory=False, frame_max=frame_max
    )
    _, _, size = struct.unpack_from(">BHI", published, 0)
    content = published[7 + size + 1 :]  # header and body frames are the same
    args = (
        b"\x00\x3c\x00\x3c"
        + _short(CONSUMER_TAG)
        + struct.pack(">Q", tag)
        + (b"\x01" if redelivered else b"\x00")
        + _short("")
        + _short(routing_key)
    )
    return struct.pack(">BHI", 1, channel, len(args)) + args + b"\xce" + content


class Side:
    """A consuming connection's frame handling over a real socket pair."""

    def __init__(self) -> None:
        self.writer, reader = socket.socketpair()
        self.connection = amqp.Connection()
        self.connection.channels = {}
        self.channel = amqp.Channel(self.connection, CHANNEL, auto_decode=False)
        self.connection.channels[CHANNEL] = self.channel
        self.by_py_amqp: list[amqp.Message] = []
        self.channel.callbacks[CONSUMER_TAG] = self.by_py_amqp.append
        self.connection.on_inbound_frame = frame_handler(
            self.connection, self.connection.on_inbound_method
        )
        self.transport = BufferedTCPTransport("127.0.0.1:5672")
        self.transport.sock = reader
        self.transport.connected = True
        self.connection.transport = self.transport
        self.by_reader: list[Received] = []
        self.reader = DeliveryReader(self.connection, self.channel, self.by_reader.append)

    def send(self, data: bytes) -> None:
        self.writer.sendall(data)

    def drain_py_amqp(self) -> None:
        handle = self.connection.on_inbound_frame
        while self.transport.frame_ready():
            handle(self.transport.read_frame())

    def close(self) -> None:
        self.writer.close()
        self.transport.sock.close()


@pytest.fixture
def side() -> Iterator[Side]:
    made = Side()
    yield made
    made.close()


def through_py_amqp(data: bytes) -> list[Received]:
    other = Side()
    try:
        other.send(data)
        other.drain_py_amqp()
        return [received_from(message) for message in other.by_py_amqp]
    finally:
        other.close()


def test_a_task_delivery_reads_as_py_amqp_reads_it(side: Side) -> None:
    data = deliver_frames(7, b"[[2, 2], {}, {}]", redelivered=True, routing_key="q1")
    side.send(data)
    side.reader.drain()
    assert side.by_reader == through_py_amqp(data)
    assert side.by_reader[0].delivery_tag == 7
    assert side.by_reader[0].redelivered is True
    assert side.by_reader[0].routing_key == "q1"
    assert side.by_reader[0].properties["application_headers"] == TASK_HEADERS
    assert side.by_py_amqp == []  # read here, not by py-amqp
    assert side.connection.bytes_recv == 3  # what heartbeat_tick watches


def test_empty_and_multi_frame_bodies(side: Side) -> None:
    big = bytes(range(256)) * 40  # 10,240 bytes in frames of 4,088
    data = deliver_frames(1, b"") + deliver_frames(2, big, frame_max=4096)
    side.send(data)
    side.reader.drain()
    assert [r.body for r in side.by_reader] == [b"", big]
    assert side.by_reader == through_py_amqp(data)
    assert side.connection.bytes_recv == 2 + 5


def test_other_frames_go_to_py_amqp_between_deliveries(side: Side) -> None:
    heartbeat = struct.pack(">BHI", 8, 0, 0) + b"\xce"
    data = deliver_frames(1, b"a") + heartbeat + deliver_frames(2, b"b")
    side.send(data)
    side.reader.drain()
    assert [r.delivery_tag for r in side.by_reader] == [1, 2]
    assert side.connection.bytes_recv == 7


def test_a_closing_channel_is_left_to_py_amqp(side: Side) -> None:
    side.channel.is_closing = True
    side.send(deliver_frames(1, b"a"))
    side.reader.drain()
    # py-amqp ignores a delivery on a channel it is closing, as it always did.
    assert side.by_reader == []
    assert side.by_py_amqp == []


@given(cut=st.integers(min_value=1))
def test_a_delivery_cut_anywhere_is_read_once_whole(cut: int) -> None:
    data = deliver_frames(1, b"x" * 300) + deliver_frames(2, b"y" * 9000, frame_max=4096)
    cut %= len(data)
    side = Side()
    try:
        side.send(data[:cut])
        side.reader.drain()
        side.send(data[cut:])
        side.reader.drain()
        # Read here when whole, by py-amqp when its frames came in pieces: never both.
        got = side.by_reader + [received_from(m) for m in side.by_py_amqp]
        assert sorted(got, key=lambda r: r.delivery_tag) == through_py_amqp(data)
    finally:
        side.close()


def test_a_malformed_frame_end_raises_py_amqps_error(side: Side) -> None:
    data = bytearray(deliver_frames(1, b"a"))
    data[-1] = 0x00  # the body frame's end octet
    side.send(bytes(data))
    with pytest.raises(amqp.exceptions.UnexpectedFrame):
        side.reader.drain()
    assert side.by_reader == []


# -- properties --------------------------------------------------------------------------

shorts = st.text(max_size=40)
property_sets = st.fixed_dictionaries(
    {},
    optional={
        "content_type": shorts,
        "content_encoding": shorts,
        "application_headers": st.dictionaries(st.text(max_size=30), amqp_value, max_size=12),
        "delivery_mode": st.integers(0, 255),
        "priority": st.integers(0, 255),
        "correlation_id": shorts,
        "reply_to": shorts,
        "expiration": shorts,
        "message_id": shorts,
        "timestamp": st.integers(0, 2**63),
        "type": shorts,
        "user_id": shorts,
        "app_id": shorts,
        "cluster_id": shorts,
    },
)


def both(frame: bytes) -> tuple[str, str]:
    """What each decoder makes of `frame`: the result's repr, or the error's type."""
    outcomes = []
    for decode in (
        lambda: decode_properties(frame, 0),
        lambda: decode_properties_basic(frame, 0)[0],
    ):
        try:
            outcomes.append(repr(decode()))
        except Exception as exc:
            outcomes.append(type(exc).__name__)
    return outcomes[0], outcomes[1]


@given(property_sets)
def test_any_properties_decode_as_py_amqp_decodes_them(properties: dict[str, Any]) -> None:
    frame = py_amqp(properties)
    ours, theirs = both(frame)
    assert ours == theirs
    assert decode_properties(frame, 0) == decode_properties_basic(frame, 0)[0]


@given(
    properties=property_sets,
    edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4),
    cut=st.integers(min_value=0),
)
def test_damaged_headers_decode_or_fail_as_py_amqp(
    properties: dict[str, Any], edits: list[tuple[int, int]], cut: int
) -> None:
    frame = bytearray(py_amqp(properties))
    for where, byte in edits:
        frame[where % len(frame)] = byte
    damaged = bytes(frame[: len(frame) - cut % len(frame)] if cut % 3 == 0 else frame)
    ours, theirs = both(damaged)
    assert ours == theirs


def test_task_headers_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = encode_properties(TASK_PROPERTIES)
    expected = decode_properties_basic(frame, 0)[0]

    def refuse(buf: bytes, offset: int) -> Any:
        raise AssertionError("left to py-amqp")

    monkeypatch.setattr("celeriac.brokers.amqp.inbound.decode_properties_basic", refuse)
    assert decode_properties(frame, 0) == expected == TASK_PROPERTIES
