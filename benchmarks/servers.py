"""The servers the benchmark uses, and how it keeps to its own data on them.

Redis: one dedicated logical database (default 15), claimed for the whole benchmark.
The claim refuses a database that holds any key but the claim itself, then sets the
claim key with `SET NX`, so two benchmarks never share a database and nothing of anyone
else's can be in it. After every run all keys but the claim are deleted (SCAN + UNLINK,
never FLUSHDB), so each run starts from an empty database and leaves nothing behind.
Each library's own layout is used unchanged (no key prefixes), because a prefix would
change the client code under test (kombu wraps its Redis client to add one).

RabbitMQ: every run uses its own queue name; afterwards the runner deletes the queues
and exchanges that name implies (see `RabbitTarget.cleanup`). Exchanges every Celery
node shares (`celery.pidbox`, `reply.celery.pidbox`, `celeryev`) are left alone.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any
from urllib.parse import unquote, urlparse

import amqp
import redis

__all__ = ["CLAIM_KEY", "RabbitTarget", "RedisTarget", "reachable"]

# The claim on the benchmark's Redis database; its value names the claiming process.
CLAIM_KEY = "celeriac-benchmark:claim"
# A claim outlives a crashed benchmark by at most this long (refreshed during a run).
CLAIM_TTL = 3600


def reachable(url: str, default_port: int) -> bool:
    """Whether a TCP connection to the URL's host and port opens within a second."""
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1.0
        ):
            return True
    except OSError:
        return False


class RedisTarget:
    """The benchmark's claimed Redis database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = redis.Redis.from_url(url)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.claimed = False

    @property
    def db(self) -> int:
        return int(self.client.connection_pool.connection_kwargs.get("db", 0))

    def version(self) -> str:
        info: dict[str, Any] = self.client.info("server")
        return str(info.get("redis_version", "?"))

    def claim(self) -> None:
        """Take the database for this benchmark, or explain why not."""
        foreign = [key for key in self.client.scan_iter(count=100) if key != CLAIM_KEY.encode()]
        if foreign:
            raise RuntimeError(
                f"Redis database {self.db} at {self.url} holds {len(foreign)} key(s) that are "
                f"not the benchmark's (e.g. {foreign[0]!r}); choose an empty database with "
                "--redis-url redis://127.0.0.1:6379/<db>"
            )
        if not self.client.set(CLAIM_KEY, self.token, nx=True, ex=CLAIM_TTL):
            holder = self.client.get(CLAIM_KEY)
            raise RuntimeError(
                f"another benchmark ({holder!r}) holds Redis database {self.db}; wait for it "
                "or use another database with --redis-url"
            )
        self.claimed = True

    def _holder(self) -> str | None:
        value = self.client.get(CLAIM_KEY)
        return value.decode() if isinstance(value, bytes) else value

    def wipe(self) -> int:
        """Delete every key of the claimed database but the claim; refresh the claim."""
        if not self.claimed:
            return 0
        holder = self._holder()
        if holder is not None and holder != self.token:
            raise RuntimeError(f"the benchmark's Redis claim was taken over by {holder!r}")
        deleted = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(count=1000):
            if key == CLAIM_KEY.encode():
                continue
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(self.client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(self.client.unlink(*batch))
        self.client.set(CLAIM_KEY, self.token, ex=CLAIM_TTL)
        return deleted

    def release(self) -> None:
        """Wipe and drop the claim (only our own)."""
        if not self.claimed:
            return
        self.wipe()
        if self._holder() == self.token:
            self.client.delete(CLAIM_KEY)
        self.claimed = False
        self.client.close()


class RabbitTarget:
    """The RabbitMQ node the benchmark publishes to."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = urlparse(url)
        vhost = unquote(parsed.path[1:]) if parsed.path and parsed.path != "/" else "/"
        self._params: dict[str, Any] = {
            "host": f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 5672}",
            "userid": unquote(parsed.username or "guest"),
            "password": unquote(parsed.password or "guest"),
            "virtual_host": vhost or "/",
            "connect_timeout": 5,
        }

    def _connect(self) -> amqp.Connection:
        connection = amqp.Connection(**self._params)
        connection.connect()
        return connection

    def version(self) -> str:
        connection = self._connect()
        try:
            version = connection.server_properties.get("version", "?")
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            connection.close()

    def cleanup(self, queues: list[str], exchanges: list[str]) -> None:
        """Delete these queues and exchanges; missing ones are fine."""
        connection = self._connect()
        try:
            channel = connection.channel()
            for queue in queues:
                try:
                    channel.queue_delete(queue)
                except amqp.exceptions.NotFound:
                    channel = connection.channel()
            for exchange in exchanges:
                try:
                    channel.exchange_delete(exchange)
                except amqp.exceptions.NotFound:
                    channel = connection.channel()
        finally:
            connection.close()

    def queue_exists(self, queue: str) -> bool:
        connection = self._connect()
        try:
            channel = connection.channel()
            try:
                channel.queue_declare(queue, passive=True)
            except amqp.exceptions.NotFound:
                return False
            return True
        finally:
            connection.close()
