"""A small threaded TCP proxy on 127.0.0.1 that injects network faults.

`FaultProxy(upstream_port)` listens on a free loopback port and forwards every connection
to 127.0.0.1:`upstream_port`, two pump threads per connection. Faults, switched at any
time and applying to both directions:

- `latency(seconds)`: every chunk waits that long before it is forwarded;
- `trickle(chunk, pause)`: chunks are forwarded `chunk` bytes at a time, `pause` apart;
- `reset_after(n)`: each connection open now forwards `n` more bytes, then both of its
  sides are closed with a RST (so usually in the middle of a frame);
- `black_hole()`: each connection open now stops forwarding for good, without closing
  (what a dead peer or a pulled cable looks like); what arrives is read and dropped, so
  the proxy sees when a client gives the connection up. New connections pass.
- `lose_replies(n)`: the next `n` chunks the server sends (on any connection) are
  dropped, and the connection each came on is reset: the server ran the command, the
  client never hears so (a reply lost to a broken link), and retries on a new one.
- `clear()`: back to plain forwarding (a black-holed connection stays dead).

Each connection's accept and client-close times are recorded (`accepted`, `closed`,
keyed by the client's port), so a test can tell when a client noticed a dead link.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

__all__ = ["FaultProxy"]

_CHUNK = 65536


@dataclass
class _Link:
    client: socket.socket
    upstream: socket.socket
    port: int
    budget: int | None = None  # bytes left before a reset
    dead: bool = False  # black-holed for good
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _rst(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """A loopback TCP proxy with switchable faults (see the module docstring)."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._latency = 0.0
        self._trickle: tuple[int, float] | None = None
        self._replies_to_lose = 0
        self.lost_replies = 0
        self._stopping = False
        self.accepted: dict[int, float] = {}
        self.closed: dict[int, float] = {}
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._acceptor.start()

    # -- faults --------------------------------------------------------------------------

    def latency(self, seconds: float) -> None:
        self._latency = seconds

    def trickle(self, chunk: int = 16, pause: float = 0.002) -> None:
        self._trickle = (chunk, pause)

    def reset_after(self, n: int) -> list[int]:
        """Reset every open connection after `n` more bytes; returns their client ports."""
        with self._lock:
            links = [link for link in self._links if not link.closed and not link.dead]
        for link in links:
            link.budget = n
        return [link.port for link in links]

    def black_hole(self) -> list[int]:
        """Stop forwarding on every open connection, for good; returns their client ports."""
        with self._lock:
            links = [link for link in self._links if not link.closed and not link.dead]
        for link in links:
            link.dead = True
        return [link.port for link in links]

    def lose_replies(self, n: int = 1) -> None:
        """Drop the next `n` server replies, resetting their connections."""
        with self._lock:
            self._replies_to_lose = n

    def _lose_reply(self) -> bool:
        with self._lock:
            if self._replies_to_lose <= 0:
                return False
            self._replies_to_lose -= 1
            self.lost_replies += 1
            return True

    def clear(self) -> None:
        self._latency = 0.0
        self._trickle = None
        self._replies_to_lose = 0
        with self._lock:
            for link in self._links:
                link.budget = None

    def open_ports(self) -> list[int]:
        with self._lock:
            return [link.port for link in self._links if not link.closed]

    # -- plumbing ------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, address = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _rst(client)
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, upstream, address[1])
            self.accepted[link.port] = time.time()
            with self._lock:
                self._links.append(link)
            for source, target, from_client in (
                (client, upstream, True),
                (upstream, client, False),
            ):
                thread = threading.Thread(
                    target=self._pump, args=(link, source, target, from_client), daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _close(self, link: _Link, *, reset: bool) -> None:
        with link.lock:
            if link.closed:
                return
            link.closed = True
        for sock in (link.client, link.upstream):
            if reset:
                _rst(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def _pump(self, link: _Link, source: socket.socket, target: socket.socket, up: bool) -> None:
        while not link.closed and not self._stopping:
            try:
                ready, _, _ = select.select([source], [], [], 0.2)
            except (OSError, ValueError):
                break
            if not ready:
                continue
            try:
                data = source.recv(_CHUNK)
            except OSError:
                data = b""
            if not data:
                if up:
                    self.closed.setdefault(link.port, time.time())
                if link.dead:
                    # The client gave a dead link up; the server side stays silent.
                    if up:
                        self._close(link, reset=True)
                    return
                break
            if link.dead:
                continue  # dropped: nothing goes through a black hole
            if not up and self._lose_reply():
                self._close(link, reset=True)
                break
            if not self._forward(link, target, data):
                break
        if not link.dead or self._stopping:
            self._close(link, reset=False)

    def _forward(self, link: _Link, target: socket.socket, data: bytes) -> bool:
        if self._latency:
            time.sleep(self._latency)
        budget = link.budget
        reset = False
        if budget is not None:
            if len(data) >= budget:
                data, reset = data[:budget], True
            link.budget = budget - len(data)
        try:
            trickle = self._trickle
            if trickle is None:
                target.sendall(data)
            else:
                chunk, pause = trickle
                for start in range(0, len(data), chunk):
                    target.sendall(data[start : start + chunk])
                    time.sleep(pause)
        except OSError:
            return False
        if reset:
            self._close(link, reset=True)
            return False
        return True

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            self._close(link, reset=False)
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(2)
