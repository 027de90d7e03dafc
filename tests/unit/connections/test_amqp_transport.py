"""The buffered AMQP transport cuts frames out of whatever the socket delivered."""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING

import pytest
from amqp.exceptions import UnexpectedFrame

from celeriac.connections.amqp_transport import BufferedTCPTransport

if TYPE_CHECKING:
    from collections.abc import Iterator


def frame(kind: int, channel: int, payload: bytes, end: bytes = b"\xce") -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + end


@pytest.fixture
def pair() -> Iterator[tuple[BufferedTCPTransport, socket.socket]]:
    ours, theirs = socket.socketpair()
    transport = BufferedTCPTransport("127.0.0.1:5672")
    transport.sock = ours
    transport._setup_transport()
    transport.connected = True
    yield transport, theirs
    ours.close()
    theirs.close()


def read(transport: BufferedTCPTransport, timeout: float | None = 1.0) -> tuple[int, int, bytes]:
    with transport.having_timeout(timeout):
        return transport.read_frame()


def test_frames_arriving_together_are_read_one_by_one(
    pair: tuple[BufferedTCPTransport, socket.socket],
) -> None:
    transport, server = pair
    sent = [(1, 1, b"method"), (2, 1, b"header" * 10), (3, 1, b""), (8, 0, b"")]
    server.sendall(b"".join(frame(*f) for f in sent))
    assert [read(transport) for _ in sent] == sent


def test_a_frame_split_across_reads_is_put_back_together(
    pair: tuple[BufferedTCPTransport, socket.socket],
) -> None:
    transport, server = pair
    data = frame(3, 2, bytes(range(256)) * 40)
    server.sendall(data[:3])
    with pytest.raises(socket.timeout):
        read(transport, timeout=0)  # a partial header: nothing yet, nothing lost
    server.sendall(data[3:500])
    with pytest.raises(socket.timeout):
        read(transport, timeout=0)  # a partial payload
    server.sendall(data[500:])
    assert read(transport, timeout=0) == (3, 2, bytes(range(256)) * 40)
    with pytest.raises(socket.timeout):
        read(transport, timeout=0)


def test_a_buffered_frame_is_read_without_touching_the_socket_timeout(
    pair: tuple[BufferedTCPTransport, socket.socket],
) -> None:
    transport, server = pair
    transport.sock.settimeout(7.0)
    server.sendall(frame(1, 1, b"a") + frame(1, 1, b"b"))
    assert read(transport, timeout=0)[2] == b"a"
    calls: list[float | None] = []
    real = transport.sock
    transport.sock = type("Spy", (), {"settimeout": calls.append, "gettimeout": lambda: 7.0})()
    try:
        assert read(transport, timeout=0)[2] == b"b"
    finally:
        transport.sock = real
    assert calls == []
    assert real.gettimeout() == 7.0


@pytest.mark.parametrize(
    ("sent", "peer_closes", "error", "match"),
    [
        (frame(1, 1, b"x", end=b"\x00"), False, UnexpectedFrame, "frame_end 0x00"),
        (frame(1, 1, b"last")[:5], True, OSError, "unexpectedly closed"),
    ],
    ids=["a wrong frame end is an unexpected frame", "a closed peer is a lost connection"],
)
def test_a_broken_stream_marks_the_transport_disconnected(
    pair: tuple[BufferedTCPTransport, socket.socket],
    sent: bytes,
    peer_closes: bool,
    error: type[Exception],
    match: str,
) -> None:
    transport, server = pair
    server.sendall(sent)
    if peer_closes:
        server.close()
    with pytest.raises(error, match=match):
        read(transport)
    assert transport.connected is False


def test_frame_ready_takes_in_what_arrived_without_waiting(
    pair: tuple[BufferedTCPTransport, socket.socket],
) -> None:
    transport, server = pair
    assert transport.frame_ready() is False  # nothing there: no wait, no error
    data = frame(1, 1, b"one") + frame(1, 1, b"two")
    server.sendall(data[:-3])
    assert transport.frame_ready() is True
    assert transport.read_frame() == (1, 1, b"one")
    assert transport.frame_ready() is False  # half of "two" is kept for later
    server.sendall(data[-3:])
    assert transport.frame_ready() is True
    assert transport.read_frame() == (1, 1, b"two")
    server.close()
    with pytest.raises(OSError, match="unexpectedly closed"):
        transport.frame_ready()


def test_frame_ready_on_a_socket_with_a_timeout_does_not_wait_for_it(
    pair: tuple[BufferedTCPTransport, socket.socket],
) -> None:
    transport, server = pair
    transport.sock.settimeout(30.0)
    assert transport.frame_ready() is False
    server.sendall(frame(8, 0, b""))
    assert transport.frame_ready() is True
    assert transport.read_frame() == (8, 0, b"")
