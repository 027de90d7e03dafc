"""A py-amqp TCP transport that reads frames out of one buffer.

py-amqp's plain TCP transport reads a frame with three `recv` calls sized to the frame
(7 header bytes, the payload, the end octet), and `drain_events(timeout=0)` switches the
socket to non-blocking and back around every frame. A delivery is three frames, so a
consumer paid about nine `recv` and six `settimeout` system calls per message. This
transport receives whatever the kernel holds (up to `CHUNK` bytes) in one call, cuts
every whole frame out of that buffer, and touches the socket's timeout only when it must
wait for bytes; `drain_nowait` reads with a non-blocking `recv` flag instead, so
handling what has arrived costs one `recv` for a whole window of deliveries. Frames,
errors and timeouts are what py-amqp's own transport gives its connection; TLS
connections keep py-amqp's transport.
"""

from __future__ import annotations

import select
import socket
from contextlib import contextmanager
from struct import Struct
from typing import TYPE_CHECKING, Any

import amqp
from amqp.exceptions import UnexpectedFrame
from amqp.transport import TCPTransport

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["BufferedTCPTransport", "Connection", "drain", "drain_nowait", "is_timeout"]

# What one `recv` asks for: a prefetch window of small deliveries in one call.
CHUNK = 256 * 1024
# type (octet), channel (short), payload size (long); then the payload and 0xCE.
FRAME_HEADER = Struct(">BHI")
FRAME_END = 0xCE


class BufferedTCPTransport(TCPTransport):  # type: ignore[misc]  # py-amqp is untyped
    """`amqp.transport.TCPTransport` with buffered frame reads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # py-amqp makes a new transport for every connect, so one buffer serves its life.
        self._frames = bytearray()
        self._offset = 0
        super().__init__(*args, **kwargs)

    def _frame_end(self) -> int:
        """Where the end octet of the first buffered frame is, or -1 while it is not
        whole yet (reading it then needs the socket)."""
        start = self._offset
        if len(self._frames) - start < FRAME_HEADER.size:
            return -1
        end: int = start + FRAME_HEADER.size + FRAME_HEADER.unpack_from(self._frames, start)[2]
        return end if len(self._frames) > end else -1

    @contextmanager
    def having_timeout(self, timeout: float | None) -> Iterator[Any]:
        if timeout is not None and self._frame_end() >= 0:
            # read_frame will not touch the socket: leave its timeout alone.
            yield self.sock
            return
        with super().having_timeout(timeout) as sock:
            yield sock

    def read_frame(self, unpack: Any = None) -> tuple[int, int, bytes]:
        while (end := self._frame_end()) < 0:
            self._receive()
        frames, start = self._frames, self._offset
        if frames[end] != FRAME_END:
            self.connected = False
            raise UnexpectedFrame(f"Received frame_end {frames[end]:#04x} while expecting 0xce")
        kind, channel, _ = FRAME_HEADER.unpack_from(frames, start)
        self._offset = end + 1
        return kind, channel, bytes(frames[start + FRAME_HEADER.size : end])

    def frame_ready(self) -> bool:
        """A whole frame is buffered, after taking in what the socket holds without
        waiting for more (no timeout switching: a non-blocking `recv` flag).

        Raises OSError when the connection is gone.
        """
        if self._frame_end() >= 0:
            return True
        if self.sock is None:
            raise OSError("the connection is closed")
        if self.sock.gettimeout() is not None or _is_green(self.sock):
            # Python would poll for the whole timeout before a flagged recv; a gevent
            # socket waits for bytes whatever the flag says.
            return bool(select.select([self.sock], [], [], 0)[0]) and self._take_in(0)
        return self._take_in(socket.MSG_DONTWAIT)

    def buffered(self) -> tuple[bytearray, int]:
        """The receive buffer and where its first unread frame starts (for a reader
        that decodes frames in place; valid until the next read from the socket)."""
        return self._frames, self._offset

    def consume_to(self, position: int) -> None:
        """Mark the buffer read up to `position` (the end of whole frames)."""
        self._offset = position

    def take_in_nowait(self) -> bool:
        """Append what the socket holds now, without waiting; whether anything came.

        Raises OSError when the connection is gone.
        """
        if self.sock is None:
            raise OSError("the connection is closed")
        flags: int = socket.MSG_DONTWAIT
        if self.sock.gettimeout() is not None or _is_green(self.sock):
            if not select.select([self.sock], [], [], 0)[0]:
                return False
            flags = 0
        try:
            self._receive(flags)
        except TimeoutError:
            return False
        return True

    def _take_in(self, flags: int) -> bool:
        try:
            self._receive(flags)
        except TimeoutError:  # nothing there now
            return False
        return self._frame_end() >= 0

    def _receive(self, flags: int = 0) -> None:
        """Append what the socket holds to the buffer (waiting by the socket's timeout).

        Raises TimeoutError (socket.timeout) when nothing came in time, or at once with
        a non-blocking flag (the buffer keeps any partial frame for the next call), and
        OSError when the connection is gone.
        """
        frames = self._frames
        if self._offset:
            del frames[: self._offset]
            self._offset = 0
        try:
            data = self.sock.recv(CHUNK, flags)
        except BlockingIOError:
            raise TimeoutError() from None
        except TimeoutError:
            raise
        except OSError:
            self.connected = False
            raise
        if not data:
            self.connected = False
            raise OSError("Server unexpectedly closed connection")
        frames += data


def _is_green(sock: Any) -> bool:
    """A gevent socket (`worker -P gevent` patched the standard library)."""
    return type(sock).__module__.startswith("gevent")


class Connection(amqp.Connection):  # type: ignore[misc]  # py-amqp is untyped
    """`amqp.Connection` reading plain TCP through `BufferedTCPTransport`."""

    def Transport(
        self,
        host: str,
        connect_timeout: float | None,
        ssl: Any = False,
        read_timeout: float | None = None,
        write_timeout: float | None = None,
        socket_settings: Any = None,
        **kwargs: Any,
    ) -> Any:
        options = {
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "write_timeout": write_timeout,
            "socket_settings": socket_settings,
            **kwargs,
        }
        if ssl:
            return super().Transport(host, ssl=ssl, **options)
        return BufferedTCPTransport(host, **options)


def is_timeout(exc: BaseException) -> bool:
    """A socket read or write that ran out of time (the connection may live on)."""
    return isinstance(exc, socket.timeout | TimeoutError)


def drain(connection: amqp.Connection, timeout: float) -> bool:
    """Wait up to `timeout` seconds for frames and handle what comes; False when the
    time ran out with nothing received (any other failure is raised)."""
    try:
        connection.drain_events(timeout=timeout)
    except Exception as exc:
        if not is_timeout(exc):
            raise
        return False
    return True


def drain_nowait(connection: amqp.Connection) -> None:
    """Handle every frame already received, without blocking."""
    transport = connection.transport
    if isinstance(transport, BufferedTCPTransport):
        handle = connection.on_inbound_frame
        while transport.frame_ready():
            handle(transport.read_frame())
        return
    while True:  # TLS: py-amqp's own transport, by a zero timeout
        try:
            connection.drain_events(timeout=0)
        except Exception as exc:
            if is_timeout(exc):
                return
            raise
