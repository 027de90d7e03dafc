"""A TCP server on 127.0.0.1 that accepts connections and never answers.

What a result backend or broker looks like when its process is stopped (SIGSTOP), its
disk hangs, or a firewall drops the replies: connections succeed, every read waits for
ever. `SilentServer().url("redis")` is a URL that points at it; what clients send is
read and dropped.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

__all__ = ["SilentServer"]


class SilentServer:
    """Accepts on a free loopback port; reads and drops everything; never writes."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="silent-server", daemon=True)
        self._thread.start()

    def url(self, scheme: str = "redis") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def _serve(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                sockets = [self._listener, *self._clients]
            try:
                ready, _, _ = select.select(sockets, [], [], 0.2)
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                with self._lock:
                    self._clients = [c for c in self._clients if c.fileno() >= 0]
                continue
            for sock in ready:
                if sock is self._listener:
                    try:
                        client, _ = self._listener.accept()
                    except OSError:
                        continue
                    with self._lock:
                        self._clients.append(client)
                        self.accepted += 1
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:  # the client gave up: forget it
                    with self._lock:
                        self._clients.remove(sock)
                    sock.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with self._lock:
            clients, self._clients = self._clients, []
        for sock in (*clients, self._listener):
            with contextlib.suppress(OSError):
                sock.close()
