"""The Redis client shared by the Redis broker and the Redis result backend.

What lives here: turning a `redis://`, `rediss://`, `redis+socket://` (or, through
`redis_sentinel`, a `sentinel://`) URL plus options
into a redis-py connection pool, the one retry loop (bounded reconnect with exponential
backoff) every Redis operation goes through, the mapping of redis-py exceptions to
celeriac's, `RedisClient` (pool, client, raw commands and Lua scripts made on first use,
with that retry loop; `KeyWatcher` is in redis_watch.py).
The raw commands of the hot path are in `redis_packing`. What does not: any key layout
or Lua script but the shared rate limiter (`redis_rate.lua`); those belong to the broker
and the backend, which never import each other.

redis-py is imported here, in `redis_packing` and by the two implementation packages,
nowhere else.
"""

from __future__ import annotations

import importlib.resources
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, final
from urllib.parse import parse_qsl, unquote, urlsplit

# A missing driver raises ImportError here, which brokers/__init__ and backends/__init__
# turn into ImproperlyConfigured naming the extra to install.
import redis
import redis.exceptions as redis_errors
from redis.backoff import NoBackoff
from redis.retry import Retry

from celeriac._urls import redact_url
from celeriac.connections.redis_packing import RawCommands
from celeriac.connections.redis_sentinel import (
    SENTINEL_OPTIONS,
    as_master_url,
    close_sentinels,
    is_sentinel_url,
    sentinel_pool,
)
from celeriac.exceptions import CeleriacError, ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from celeriac.connections.breaker import CircuitBreaker

__all__ = [
    "RATE_PREFIX",
    "RETRYABLE_ERRORS",
    "RedisClient",
    "RetryPolicy",
    "call_with_retry",
    "connection_pool",
    "load_script",
    "new_connection",
    "pool_options",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Errors after which a new connection may succeed: the server restarted, is still
# loading its AOF (BusyLoadingError is a ConnectionError), or failed over to a replica.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
)
# Socket timeouts used when neither the URL nor the options set one (redis-py before 8
# has none: a read from a dead link would block for ever).
DEFAULT_SOCKET_TIMEOUT = 5.0
DEFAULT_SOCKET_CONNECT_TIMEOUT = 5.0
# ConnectionError subclasses that no retry will fix.
_FATAL_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
)

# URL query parameters and transport options passed to the connection pool as they are.
_FLOAT_OPTIONS = ("socket_timeout", "socket_connect_timeout")
_INT_OPTIONS = ("health_check_interval", "max_connections")
_BOOL_OPTIONS = ("socket_keepalive", "ssl_check_hostname")
_STR_OPTIONS = ("client_name", "username", "password", "ssl_ca_certs", "ssl_certfile")
_STR_OPTIONS_MORE = ("ssl_keyfile", "ssl_ca_path", "ssl_password")

# Every TLS option understood (Celery's `broker_use_ssl` / `redis_backend_use_ssl` keys).
_SSL_OPTIONS = frozenset(
    {
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_ca_path",
        "ssl_password",
    }
)

_CERT_REQS = {
    "required": "required",
    "cert_required": "required",
    "optional": "optional",
    "cert_optional": "optional",
    "none": "none",
    "cert_none": "none",
}


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _cert_reqs(value: Any) -> str:
    if isinstance(value, ssl.VerifyMode):
        return {ssl.CERT_REQUIRED: "required", ssl.CERT_OPTIONAL: "optional"}.get(value, "none")
    try:
        return _CERT_REQS[str(value).strip().lower()]
    except KeyError:
        raise ImproperlyConfigured(
            f"ssl_cert_reqs={value!r} is not one of required, optional, none "
            "(or CERT_REQUIRED, CERT_OPTIONAL, CERT_NONE)"
        ) from None


def pool_options(url: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Connection-pool keyword arguments for `url` and transport `options`.

    `redis://[user:pass@]host:port/db`, `rediss://...` (TLS; certificate options from the
    query string or the `ssl` option, as in Celery's `broker_use_ssl`) and
    `redis+socket:///path/to/socket?virtual_host=db` are understood. Options win over
    the URL's query string.

    Raises:
        ImproperlyConfigured: the URL or an option cannot work.
    """
    options = dict(options or {})
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query))
    kwargs: dict[str, Any] = {
        # RESP2 on purpose: the replies our scripts and the key watcher parse have one
        # shape on every redis-py version (redis-py 8 defaults to RESP3).
        "protocol": 2,
        # Retries are ours (call_with_retry), with the same arguments, so that a retried
        # fetch can be recognised; redis-py must not retry behind our back.
        "retry": Retry(NoBackoff(), 0),
    }
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    db_text = query.pop("db", None) or query.pop("virtual_host", None)
    if scheme in ("redis", "rediss"):
        kwargs["host"] = parts.hostname or "localhost"
        try:
            kwargs["port"] = parts.port or 6379
        except ValueError as exc:
            raise ImproperlyConfigured(f"bad port in Redis URL {redact_url(url)!r}") from exc
        path_db = parts.path.strip("/")
        db_text = db_text or path_db or "0"
        if scheme == "rediss":
            kwargs["connection_class"] = redis.SSLConnection
            kwargs["ssl_cert_reqs"] = "required"
    elif scheme == "redis+socket":
        if not parts.path:
            raise ImproperlyConfigured(
                f"{redact_url(url)!r} names no socket: use redis+socket:///path/to/redis.sock"
            )
        kwargs["path"] = unquote(parts.path)
        kwargs["connection_class"] = redis.UnixDomainSocketConnection
        db_text = db_text or "0"
    else:
        raise ImproperlyConfigured(
            f"{redact_url(url)!r} is not a Redis URL: use redis://, rediss:// or redis+socket://"
        )
    try:
        kwargs["db"] = int(db_text)
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"Redis database {db_text!r} in {redact_url(url)!r} is not a number"
        ) from exc

    merged: dict[str, Any] = {**query, **options}
    ssl_options = merged.pop("ssl", None)
    if isinstance(ssl_options, dict):
        merged.update(ssl_options)
    elif ssl_options and scheme != "rediss":
        raise ImproperlyConfigured(
            "the ssl option needs a rediss:// URL (or a dict of ssl_* settings with it)"
        )
    unknown = sorted(key for key in merged if key.startswith("ssl_") and key not in _SSL_OPTIONS)
    if unknown:
        raise ImproperlyConfigured(
            f"unknown Redis TLS option(s) {', '.join(unknown)}: use "
            f"{', '.join(sorted(_SSL_OPTIONS))} (Celery's broker_use_ssl keys)"
        )
    has_ssl_settings = any(key.startswith("ssl_") for key in merged)
    if has_ssl_settings and scheme != "rediss":
        raise ImproperlyConfigured(
            f"TLS settings were given but {redact_url(url)!r} is not a rediss:// URL"
        )
    for name in _FLOAT_OPTIONS:
        if merged.get(name) is not None:
            kwargs[name] = float(merged[name])
    for name in _INT_OPTIONS:
        if merged.get(name) is not None:
            kwargs[name] = int(merged[name])
    for name in _BOOL_OPTIONS:
        if merged.get(name) is not None:
            kwargs[name] = _to_bool(merged[name])
    # Explicit, whatever the redis-py version: no command waits on a server-side timeout
    # (fetches are scripts, idle waits use `can_read` with their own timeout), so a read
    # that takes longer means a dead link, and the retry loop reconnects.
    kwargs.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
    if "path" not in kwargs:  # TCP only
        kwargs.setdefault("socket_connect_timeout", DEFAULT_SOCKET_CONNECT_TIMEOUT)
        kwargs.setdefault("socket_keepalive", True)
    for name in (*_STR_OPTIONS, *_STR_OPTIONS_MORE):
        if merged.get(name) is not None:
            kwargs[name] = str(merged[name])
    if merged.get("ssl_cert_reqs") is not None:
        kwargs["ssl_cert_reqs"] = _cert_reqs(merged["ssl_cert_reqs"])
    if scheme == "rediss":
        # The host name is checked whenever the certificate is (redis-py 5 did not by
        # default); an explicit ssl_check_hostname=false still turns it off.
        kwargs.setdefault("ssl_check_hostname", kwargs["ssl_cert_reqs"] != "none")
        if kwargs["ssl_cert_reqs"] == "none":
            kwargs["ssl_check_hostname"] = False
    if scheme != "rediss":
        for name in [key for key in kwargs if key.startswith("ssl_")]:
            del kwargs[name]
    return kwargs


def connection_pool(url: str, options: Mapping[str, Any] | None = None) -> redis.ConnectionPool:
    """A (not yet connected) redis-py pool for `url` (a `sentinel://` list included)."""
    if is_sentinel_url(url):
        given = dict(options or {})
        master = pool_options(
            as_master_url(url, tls=bool(given.get("ssl"))),
            {key: value for key, value in given.items() if key not in SENTINEL_OPTIONS},
        )
        return sentinel_pool(url, given, master)
    kwargs = pool_options(url, options)
    max_connections = kwargs.pop("max_connections", None)
    return redis.ConnectionPool(max_connections=max_connections, **kwargs)


def new_connection(pool: redis.ConnectionPool, **overrides: Any) -> Any:
    """A connection outside `pool` (but configured like it) for a long-lived subscriber."""
    kwargs = {**pool.connection_kwargs, **overrides}
    return pool.connection_class(**kwargs)


@final
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard an operation tries to reach Redis before giving up.

    Waits `interval_start`, doubling up to `interval_max`, between at most `max_retries`
    retries: with the defaults about 6.5 s in all, enough for a Redis restart.
    """

    max_retries: int = 10
    interval_start: float = 0.05
    interval_max: float = 1.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RetryPolicy:
        """Read `connection_retries`, `connection_retry_backoff`, `..._backoff_max`."""
        default = cls()
        return cls(
            max_retries=int(options.get("connection_retries", default.max_retries)),
            interval_start=float(options.get("connection_retry_backoff", default.interval_start)),
            interval_max=float(options.get("connection_retry_backoff_max", default.interval_max)),
        )

    def delays(self) -> Iterator[float]:
        delay = self.interval_start
        for _ in range(self.max_retries):
            yield delay
            delay = min(delay * 2, self.interval_max)


def call_with_retry(
    operation: Callable[[], T],
    *,
    pool: redis.ConnectionPool,
    policy: RetryPolicy,
    what: str,
    error: type[CeleriacError],
    unreachable: type[CeleriacError] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    breaker: CircuitBreaker | None = None,
) -> T:
    """Run `operation`, reconnecting with backoff while Redis cannot be reached.

    Driver exceptions never escape: connection trouble that outlasts `policy` becomes
    `unreachable` (default `error`), anything else Redis answers becomes `error`.

    Args:
        operation: The Redis call(s); run again, unchanged, after a connection error.
        pool: The pool whose idle connections are dropped before a retry.
        policy: How many retries, how far apart.
        what: What was being done, for the error message ("publish to celery").
        error: The celeriac exception for a failed operation.
        unreachable: The celeriac exception once retries are exhausted.
        breaker: This server's circuit breaker: while open, fail at once; a failed
            attempt that opens it ends the retries.
    """
    delays = policy.delays()
    attempts = 0
    while True:
        attempts += 1
        if breaker is not None and not breaker.allow():
            raise (unreachable or error)(f"{what}: {breaker.describe()}")
        try:
            result = operation()
        except _FATAL_ERRORS as exc:
            if breaker is not None:
                breaker.succeeded()  # it answered
            raise (unreachable or error)(
                f"{what}: Redis refused the credentials ({exc}); check the user and "
                "password in the URL"
            ) from exc
        except RETRYABLE_ERRORS as exc:
            if _is_tls_refusal(exc):
                raise (unreachable or error)(
                    f"{what}: the TLS handshake with Redis at {_describe(pool)} failed ({exc}); "
                    "check ssl_ca_certs, that the URL's host is a name the server certificate "
                    "is for, and ssl_certfile/ssl_keyfile if the server wants a client "
                    "certificate"
                ) from exc
            if breaker is not None and breaker.failed(exc):
                pool.disconnect(inuse_connections=False)
                raise (unreachable or error)(f"{what}: {breaker.describe()}") from exc
            delay = next(delays, None)
            host = _describe(pool)
            if delay is None:
                raise (unreachable or error)(
                    f"{what}: cannot reach Redis at {host} after {attempts} attempts "
                    f"({exc}); check that the server is running and the URL is right"
                ) from exc
            logger.warning(
                "%s: Redis at %s unreachable (%s); retry %d/%d in %.2f s",
                what,
                host,
                exc,
                attempts,
                policy.max_retries,
                delay,
            )
            # Idle connections point at the old server process; drop them all so the
            # retry dials a fresh one instead of finding the next dead socket.
            pool.disconnect(inuse_connections=False)
            sleep(delay)
        except redis_errors.RedisError as exc:
            if breaker is not None:
                breaker.succeeded()  # it answered
            raise error(f"{what}: Redis answered with an error: {exc}") from exc
        else:
            if breaker is not None:
                breaker.succeeded()
            return result


# OpenSSL's words for a certificate check that failed, on either side: no retry fixes it.
_TLS_REFUSALS = (
    "CERTIFICATE_VERIFY_FAILED",
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_UNKNOWN",
)


def _is_tls_refusal(exc: BaseException) -> bool:
    text = str(exc).upper()
    return isinstance(exc.__cause__, ssl.SSLCertVerificationError) or any(
        word in text for word in _TLS_REFUSALS
    )


def _describe(pool: redis.ConnectionPool) -> str:
    kwargs = pool.connection_kwargs
    service = getattr(pool, "service_name", None)
    if service is not None:
        return f"the master of {service!r} (Sentinel)"
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"


# Cluster-wide rate limits, shared by the broker and the result backend (a RabbitMQ fleet
# with Redis results keeps its rate limits here).
RATE_PREFIX = "_celeriac.rate."


@final
class RedisClient:
    """One Redis server as the broker or the result backend sees it: a pool, a redis-py
    client, the raw commands of the hot path and the registered Lua scripts, all made
    on first use, and `run`, the one way an operation reaches the server.

    Args:
        url: The `redis://`, `rediss://` or `redis+socket://` URL.
        options: Transport options (connection settings and the retry policy).
        scripts: Returns the Lua sources to register, by name (read on first use); the
            rate-slot script is registered as "rate" beside them.
        error: The celeriac exception for an operation Redis refused.
        unreachable: The celeriac exception once the retries are exhausted.
        breaker: Fail at once while the server does not answer (see `breaker.py`).
    """

    def __init__(
        self,
        url: str,
        options: Mapping[str, Any],
        *,
        scripts: Callable[[], Mapping[str, str]],
        error: type[CeleriacError],
        unreachable: type[CeleriacError],
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.url = url
        self.breaker = breaker
        self.policy = RetryPolicy.from_options(options)
        self._options = options
        self._sources = scripts
        self._error = error
        self._unreachable = unreachable
        self._lock = threading.Lock()
        self._pool: redis.ConnectionPool | None = None
        self._client: redis.Redis | None = None
        self._raw: RawCommands | None = None
        self._scripts: dict[str, Any] = {}

    def client(self) -> redis.Redis:
        """The redis-py client, made (not yet connected) on first use."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                # Everything is built before `_client` is published: a thread on the
                # lock-free path above must find the pool, raw commands and scripts too.
                pool = connection_pool(self.url, self._options)
                client = redis.Redis(connection_pool=pool)
                for name, source in self._sources().items():
                    self._scripts[name] = client.register_script(source)
                self._scripts["rate"] = client.register_script(
                    load_script("celeriac.connections", "redis_rate.lua")
                )
                self._pool, self._raw = pool, RawCommands(pool)
                self._client = client
            return self._client

    def pool(self) -> redis.ConnectionPool:
        """The connection pool (made on first use)."""
        self.client()
        pool = self._pool
        assert pool is not None
        return pool

    @property
    def closed(self) -> bool:
        """True before first use and after `close`."""
        return self._pool is None

    def raw(self) -> RawCommands:
        """The per-thread raw connections of the hot path."""
        raw = self._raw
        if raw is None:
            self.client()
            raw = self._raw
            assert raw is not None
        return raw

    def script(self, name: str) -> Any:
        """The registered Lua script `name`."""
        self.client()
        return self._scripts[name]

    def run(
        self,
        what: str,
        operation: Callable[[redis.Redis], Any],
        *,
        error: type[CeleriacError] | None = None,
        unreachable: type[CeleriacError] | None = None,
    ) -> Any:
        """Run `operation` through `call_with_retry`, with this client's exceptions unless
        `error` or `unreachable` is given."""
        client = self._client or self.client()
        pool = self._pool
        assert pool is not None
        return call_with_retry(
            lambda: operation(client),
            pool=pool,
            policy=self.policy,
            what=what,
            error=error or self._error,
            unreachable=unreachable or self._unreachable,
            breaker=self.breaker,
        )

    def reserve_rate_slot(
        self, key: str, *, prefix: str, interval: float, now: Callable[[], float]
    ) -> float:
        """Reserve the next start slot of rate key `key` (stored under `prefix` +
        `RATE_PREFIX`) atomically, in one round trip; `now` is read on every attempt."""
        script = self.script("rate")
        full_key = prefix + RATE_PREFIX + key

        def reserve(client: redis.Redis) -> float:
            args = [f"{now():.6f}", repr(float(interval))]
            return float(script(keys=[full_key], args=args, client=client))

        slot: float = self.run(f"reserve a rate slot for {key}", reserve)
        return slot

    def close(self) -> None:
        """Disconnect everything; the next use connects again."""
        with self._lock:
            pool, self._pool, self._client = self._pool, None, None
            raw, self._raw = self._raw, None
            self._scripts.clear()
        if raw is not None:
            raw.close()
        if pool is not None:
            pool.disconnect()
            close_sentinels(pool)


def load_script(package: str, name: str) -> str:
    """The text of Lua script `name` shipped in `package`."""
    return importlib.resources.files(package).joinpath(name).read_text(encoding="utf-8")
