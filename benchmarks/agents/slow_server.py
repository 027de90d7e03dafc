"""A local TCP server that answers each connection after a delay, and its client (S4 sync).

`python -m benchmarks.agents.slow_server --delay 0.1` listens on a free loopback port,
prints the port on its first line of stdout, and for every connection writes one byte
after `--delay` seconds and closes it. The S4 sync task calls `read_slow_reply()`: a
plain blocking connect and `recv` (cooperative under a gevent worker, which patched
`socket`; a thread each under a threads pool).

Standard library only: the server runs under the runner's interpreter, the client inside
every contestant's environment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys

__all__ = ["SERVER_VARIABLE", "read_slow_reply", "serve"]

# Where the worker finds the server: "host:port".
SERVER_VARIABLE = "BENCH_SLOW_SERVER"


def read_slow_reply() -> None:
    """Connect to the slow server, block until its byte arrives, close."""
    host, _, port = os.environ[SERVER_VARIABLE].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        if connection.recv(1) != b"x":
            raise RuntimeError("the slow server closed without answering")


class _Answer(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        asyncio.get_running_loop().call_later(self.delay, self._answer, transport)

    @staticmethod
    def _answer(transport: asyncio.WriteTransport) -> None:
        if not transport.is_closing():
            transport.write(b"x")
            transport.close()


async def serve(delay: float) -> None:
    """Listen on a free loopback port, print it, answer until killed."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Answer(delay), "127.0.0.1", 0, backlog=4096, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.agents.slow_server")
    parser.add_argument("--delay", type=float, default=0.1)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
