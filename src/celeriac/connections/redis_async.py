"""Waiting for Redis keys from asyncio code, on the event loop: no thread per wait.

`AsyncKeyWaiter` connects with `redis.asyncio`, configured exactly like the synchronous
pool of the same URL and options (`connections.redis.pool_options`). Each wait has its
own connection, opened on the caller's event loop and closed when the wait ends (a
connect costs one round trip on a local network; nothing is left behind on a loop that
goes away). `wait_for_keys` subscribes to the keys' channels, then reads the keys (so a value
published in between is not missed), then sleeps on the subscription until every key
holds a ready value. Writers publish each value on the channel named after its key
(Celery's result keys work that way, stock Celery's included).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from celeriac.connections.redis import pool_options

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

__all__ = ["AsyncKeyWaiter", "KeysNotReady"]

# The asyncio twins of the connection classes the synchronous options may name.
_ASYNC_CONNECTION_CLASSES: dict[Any, Any] = {
    redis.SSLConnection: aioredis.SSLConnection,
    redis.UnixDomainSocketConnection: aioredis.UnixDomainSocketConnection,
}
# Longest single sleep on the subscription, so a wait without timeout notices a dead link.
_MAX_SOCKET_WAIT = 1.0


class KeysNotReady(Exception):
    """The deadline passed; the message lists the keys still waited for."""


def _async_pool(url: str, options: Mapping[str, Any]) -> aioredis.ConnectionPool:
    kwargs = pool_options(url, options)
    max_connections = kwargs.pop("max_connections", None)
    kwargs["retry"] = AsyncRetry(NoBackoff(), 0)
    if "connection_class" in kwargs:
        kwargs["connection_class"] = _ASYNC_CONNECTION_CLASSES[kwargs["connection_class"]]
    # A subscribed RESP2 connection answers PING differently; the sleep bound notices a
    # dead server by itself.
    kwargs["health_check_interval"] = 0
    # Idle subscriptions wait up to _MAX_SOCKET_WAIT: reads must not time out before.
    kwargs["socket_timeout"] = max(float(kwargs.get("socket_timeout") or 0), _MAX_SOCKET_WAIT * 2)
    return aioredis.ConnectionPool(max_connections=max_connections, **kwargs)


class AsyncKeyWaiter:
    """Waits for Redis keys on whichever event loop calls it.

    Args:
        url: The Redis URL.
        options: Transport options, as for the synchronous client.
    """

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        self._url = url
        self._options = dict(options)
        # Validated (and the URL parsed) once, here, not on every wait.
        _async_pool(url, self._options)

    async def wait_for_keys(
        self,
        keys: list[str],
        *,
        is_ready: Callable[[str, bytes], bool],
        deadline: float | None,
        delays: Iterator[float],
    ) -> dict[str, bytes]:
        """The ready value of every key, by key.

        Args:
            keys: The keys (and channels) to wait on.
            is_ready: Whether a value read or received for a key ends its wait.
            deadline: `time.monotonic()` by which to give up (None: never).
            delays: Pauses between reconnections; when used up, errors propagate.

        Raises:
            KeysNotReady: not all ready by `deadline`.
            redis.RedisError, OSError: the server stayed unreachable.
        """
        done: dict[str, bytes] = {}
        pending = set(keys)
        while pending:
            try:
                await self._wait_once(pending, done, is_ready, deadline)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                delay = next(delays, None)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
        return done

    async def _wait_once(
        self,
        pending: set[str],
        done: dict[str, bytes],
        is_ready: Callable[[str, bytes], bool],
        deadline: float | None,
    ) -> None:
        client = aioredis.Redis(connection_pool=_async_pool(self._url, self._options))
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(*pending)
            ordered = sorted(pending)
            values = await client.mget(ordered)
            for key, value in zip(ordered, values, strict=True):
                if isinstance(value, bytes) and is_ready(key, value):
                    done[key] = value
                    pending.discard(key)
            while pending:
                wait = _MAX_SOCKET_WAIT
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise KeysNotReady(", ".join(sorted(pending)))
                    wait = min(wait, remaining)
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                if message is None or message.get("type") != "message":
                    continue
                channel = message["channel"]
                key = channel.decode() if isinstance(channel, bytes) else str(channel)
                data = message["data"]
                if isinstance(data, str):
                    data = data.encode()
                if key in pending and is_ready(key, data):
                    done[key] = data
                    pending.discard(key)
        finally:
            await pubsub.aclose()
            await client.aclose(close_connection_pool=True)
