"""Redis behind Sentinel: `sentinel://` URLs, as kombu and Celery read them.

`sentinel://[user:password@]host:port[/db];sentinel://host2:port2;...` names the
sentinels (port 26379 when omitted); the user, password and database of the first URL
are the master's. Transport options: `master_name` (required, the service the sentinels
watch), `sentinel_kwargs` (connection settings for the sentinels themselves, e.g. their
password; by default only the socket settings are shared), `min_other_sentinels`, and
every option a `redis://` URL takes (timeouts, `ssl`).

The pool asks the sentinels for the master when it opens a connection. After a failover
the old master refuses writes (READONLY) or goes away; both are connection errors to
the one retry loop in `connections/redis.py`, which drops the pool's connections and
tries again, and the next connection goes to the master the sentinels now name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from celeriac._urls import redact_url
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["DEFAULT_SENTINEL_PORT", "SENTINEL_OPTIONS", "is_sentinel_url", "sentinel_pool"]

DEFAULT_SENTINEL_PORT = 26379
# Transport options about the sentinels, not the master's connections.
SENTINEL_OPTIONS = frozenset({"master_name", "sentinel_kwargs", "min_other_sentinels"})


class MasterConnection(SentinelManagedConnection):
    """A connection to the master the sentinels name, however it is opened.

    redis-py's `SentinelManagedConnection` asks the sentinels only in `connect()`; a
    connection opened by its first command (as `RawCommands` and the result waiters
    open theirs) would dial the default localhost:6379 instead. Here every way in asks.
    """

    def connect(self) -> None:
        self.retry.call_with_retry(
            lambda: self.connect_check_health(check_health=True, retry_socket_connect=False),
            lambda error: self.disconnect(error),  # type: ignore[no-untyped-call]
        )

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if getattr(self, "_sock", None) is not None:
            return
        self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(
            check_health=check_health, retry_socket_connect=retry_socket_connect
        )


class MasterSSLConnection(MasterConnection, SentinelManagedSSLConnection):
    """`MasterConnection` over TLS."""


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() == "sentinel"


def sentinel_addresses(url: str) -> list[tuple[str, int]]:
    """The (host, port) of every sentinel in a `;`-separated `sentinel://` list."""
    addresses = []
    for part in (piece.strip() for piece in url.split(";")):
        if not part:
            continue
        parts = urlsplit(part)
        if parts.scheme.lower() != "sentinel":
            raise ImproperlyConfigured(
                f"{redact_url(part)!r} in a Sentinel list is not a sentinel:// URL"
            )
        try:
            port = parts.port or DEFAULT_SENTINEL_PORT
        except ValueError as exc:
            raise ImproperlyConfigured(f"bad port in {redact_url(part)!r}") from exc
        addresses.append((parts.hostname or "localhost", port))
    if not addresses:
        raise ImproperlyConfigured("empty sentinel:// URL: name at least one sentinel")
    return addresses


def sentinel_pool(
    url: str, options: Mapping[str, Any], master_options: dict[str, Any]
) -> SentinelConnectionPool:
    """A pool of connections to the master that the sentinels of `url` name.

    Args:
        url: The `sentinel://` list.
        options: Transport options (`master_name` and the others above).
        master_options: Connection-pool keyword arguments for the master, as
            `pool_options` made them from the first URL (its host and port are ignored).

    Raises:
        ImproperlyConfigured: no `master_name`, or a URL that is not a Sentinel list.
    """
    master_name = options.get("master_name")
    if not master_name or not isinstance(master_name, str):
        raise ImproperlyConfigured(
            f"{redact_url(url)!r} needs the master_name transport option (the service the "
            "sentinels watch): broker_transport_options = {'master_name': 'mymaster'} "
            "(result_backend_transport_options for the result backend)"
        )
    addresses = sentinel_addresses(url)
    kwargs = dict(master_options)
    kwargs.pop("host", None)
    kwargs.pop("port", None)
    max_connections = kwargs.pop("max_connections", None)
    tls = kwargs.pop("connection_class", None) is redis.SSLConnection
    kwargs["connection_class"] = MasterSSLConnection if tls else MasterConnection
    given = options.get("sentinel_kwargs")
    if given is not None and not isinstance(given, dict):
        raise ImproperlyConfigured("the sentinel_kwargs transport option must be a dict")
    sentinel_kwargs: dict[str, Any] = {
        key: value for key, value in kwargs.items() if key.startswith("socket_")
    }
    sentinel_kwargs.update(protocol=2, retry=Retry(NoBackoff(), 0))
    sentinel_kwargs.update(given or {})
    manager = Sentinel(
        addresses,
        min_other_sentinels=int(options.get("min_other_sentinels", 0)),
        sentinel_kwargs=sentinel_kwargs,
    )
    return SentinelConnectionPool(  # type: ignore[no-untyped-call]
        master_name, manager, max_connections=max_connections, **kwargs
    )


def as_master_url(url: str, *, tls: bool) -> str:
    """The first URL of a Sentinel list as a `redis://` URL (credentials, database and
    query kept), for reading the master's connection settings."""
    first = url.split(";")[0].strip()
    parts = urlsplit(first)
    return urlunsplit(("rediss" if tls else "redis", parts.netloc, parts.path, parts.query, ""))


def close_sentinels(pool: Any) -> None:
    """Close the connections the pool's Sentinel manager opened to the sentinels."""
    manager = getattr(pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        sentinel.close()
