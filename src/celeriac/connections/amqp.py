"""AMQP plumbing shared by the RabbitMQ broker and the `rpc://` result backend.

What lives here: turning a URL plus transport options into connection parameters
(kombu's rules, so the same URL means the same vhost), opening a py-amqp connection
with failover and a timeout, telling connection failures from channel failures and
from permanent refusals, the reconnect backoff, and the keep-alive thread that sends
heartbeats for connections nobody is reading. What does not live here: any queue
layout (`brokers/amqp/`) or result format (`backends/rpc.py`).

py-amqp is imported lazily by `open_connection`, so importing this module needs no
driver; the broker and the backend import it only when they are used.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote, urlparse

from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import amqp

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HEARTBEAT",
    "AMQPParams",
    "Backoff",
    "KeepAlive",
    "is_channel_error",
    "is_connection_error",
    "is_permanent_refusal",
    "open_connection",
    "parse_amqp_url",
    "tls_options",
]

logger = logging.getLogger(__name__)

# Celery compat: broker_heartbeat defaults to 120 s (RabbitMQ then negotiates down to
# its own 60 s unless configured otherwise).
DEFAULT_HEARTBEAT = 120.0
# kombu's default connect_timeout.
DEFAULT_CONNECT_TIMEOUT = 4.0
DEFAULT_PORT = 5672
DEFAULT_TLS_PORT = 5671
TLS_SCHEMES = frozenset({"amqps"})
# Options a URL query string may set (kombu accepts these in the query too).
_QUERY_OPTIONS = {
    "heartbeat": float,
    "connect_timeout": float,
    "login_method": str,
}


@dataclass(frozen=True, slots=True)
class AMQPParams:
    """Everything needed to open a connection to one RabbitMQ (or one of several)."""

    hosts: tuple[tuple[str, int], ...]
    userid: str
    password: str = field(repr=False)
    virtual_host: str = "/"
    ssl: bool | dict[str, Any] = False
    heartbeat: float = DEFAULT_HEARTBEAT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    login_method: str | None = None
    scheme: str = "amqp"

    def ssl_for(self, index: int) -> bool | dict[str, Any]:
        """The TLS options for host `index`: its own name is checked against the
        certificate (each failover host's) unless `server_hostname` was given."""
        if not self.ssl or not isinstance(self.ssl, dict):
            return self.ssl
        return with_server_hostname(self.ssl, self.hosts[index][0])

    def describe(self, index: int = 0) -> str:
        """`amqp://user@host:port/vhost` for logs and errors: never the password."""
        host, port = self.hosts[index % len(self.hosts)]
        vhost = "/" if self.virtual_host == "/" else self.virtual_host
        return f"{self.scheme}://{self.userid}@{host}:{port}/{vhost}"


def _one_url(url: str, options: Mapping[str, Any]) -> tuple[str, str, int, str, str, str, bool]:
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("amqp", "amqps", "pyamqp", "rpc"):
        raise ImproperlyConfigured(
            f"not an AMQP URL: {url.split('@')[-1]!r} (use amqp://user:pass@host:5672/vhost)"
        )
    # Parse with HTTP semantics after the scheme, as kombu does, so that odd
    # characters in passwords behave the same in both.
    parts = urlparse("http://" + rest)
    use_tls = scheme in TLS_SCHEMES or bool(options.get("ssl"))
    try:
        port = parts.port or (DEFAULT_TLS_PORT if use_tls else DEFAULT_PORT)
    except ValueError as exc:
        raise ImproperlyConfigured(f"bad port in AMQP URL {url.split('@')[-1]!r}") from exc
    host = unquote(parts.hostname or "") or "localhost"
    userid = unquote(parts.username or "") or "guest"
    password = unquote(parts.password or "") if parts.password is not None else "guest"
    # Celery compat (kombu): the vhost is the path without its first slash, so
    # `//` and `/%2F` mean "/", and an empty path means "/" too.
    path = parts.path or ""
    path = path[1:] if path.startswith("/") else path
    vhost = unquote(path) or "/"
    return scheme, host, port, userid, password, vhost, use_tls


def parse_amqp_url(url: str, options: Mapping[str, Any] | None = None) -> AMQPParams:
    """Connection parameters for `url` (several URLs joined by `;` are failover hosts).

    Args:
        url: `amqp://user:pass@host:port/vhost`, `amqps://...`, or `pyamqp://...`.
        options: Transport options: `heartbeat` (seconds, 0 disables), `connect_timeout`,
            `ssl` (True, or a dict of py-amqp/Celery `broker_use_ssl` keys: `ca_certs`,
            `certfile`, `keyfile`, `cert_reqs`, `server_hostname`, `ciphers`,
            `tls_minimum_version`), `login_method`. Query-string values win over options.

    Raises:
        ImproperlyConfigured: the URL or an option cannot work.
    """
    opts: dict[str, Any] = dict(options or {})
    urls = [u.strip() for u in url.split(";") if u.strip()]
    if not urls:
        raise ImproperlyConfigured("empty AMQP URL")
    # Query options of the first URL apply to the connection as a whole.
    query = dict(parse_qsl(urlparse("http://" + urls[0].partition("://")[2]).query))
    for key, value in query.items():
        convert = _QUERY_OPTIONS.get(key)
        if convert is None:
            logger.warning("ignoring unknown AMQP URL option %r", key)
            continue
        try:
            opts[key] = convert(value)
        except ValueError as exc:
            raise ImproperlyConfigured(f"AMQP URL option {key}={value!r} is invalid") from exc
    parsed = [_one_url(u, opts) for u in urls]
    _, _, _, userid, password, vhost, use_tls = parsed[0]
    hosts = tuple((host, port) for _, host, port, _, _, _, _ in parsed)

    ssl_option = tls_options(opts.get("ssl", False), enabled=use_tls)
    if ssl_option and len(hosts) == 1:
        ssl_option = with_server_hostname(ssl_option, hosts[0][0])
    try:
        heartbeat = float(opts.get("heartbeat", DEFAULT_HEARTBEAT))
        connect_timeout = float(opts.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT))
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"heartbeat/connect_timeout must be numbers: {exc}") from exc
    if heartbeat < 0 or connect_timeout <= 0:
        raise ImproperlyConfigured("heartbeat must be >= 0 and connect_timeout > 0")
    return AMQPParams(
        hosts=hosts,
        userid=userid,
        password=password,
        virtual_host=vhost,
        ssl=ssl_option,
        heartbeat=heartbeat,
        connect_timeout=connect_timeout,
        login_method=opts.get("login_method"),
        scheme="amqps" if use_tls else "amqp",
    )


# py-amqp's TLS options (`ssl.SSLContext` settings), as in Celery's `broker_use_ssl`.
TLS_OPTIONS = frozenset(
    {
        "ca_certs",
        "certfile",
        "keyfile",
        "cert_reqs",
        "server_hostname",
        "ciphers",
        "ssl_version",
        "tls_minimum_version",
        "tls_maximum_version",
    }
)
_VERIFY_MODES = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}


def tls_options(value: Any, *, enabled: bool) -> Literal[False] | dict[str, Any]:
    """The `ssl` option checked and normalised: False (no TLS: `enabled` is False) or a
    dict of py-amqp TLS options that always names `cert_reqs` (required unless it says
    otherwise).

    Celery's Redis-style names (`ssl_ca_certs`, `ssl_cert_reqs`, ...) are accepted too,
    and `cert_reqs` may be written "required", "CERT_NONE" ... as well as `ssl.CERT_*`.

    Raises:
        ImproperlyConfigured: not True/False/a dict, or a key py-amqp does not know.
    """
    if not isinstance(value, bool | dict):
        # py-amqp would silently ignore anything but a dict (an SSLContext included)
        # and connect with default settings.
        raise ImproperlyConfigured(
            "the ssl transport option must be True or a dict of TLS options "
            f"({', '.join(sorted(TLS_OPTIONS))}), as Celery's broker_use_ssl; "
            f"got {type(value).__name__}"
        )
    if not enabled:
        return False
    options: dict[str, Any] = {}
    for key, item in (value if isinstance(value, dict) else {}).items():
        name = key[4:] if key.startswith("ssl_") and key[4:] in TLS_OPTIONS else key
        if name not in TLS_OPTIONS:
            raise ImproperlyConfigured(
                f"unknown AMQP TLS option {key!r}: use {', '.join(sorted(TLS_OPTIONS))} "
                "(Celery's broker_use_ssl keys)"
            )
        options[name] = item
    options["cert_reqs"] = _verify_mode(options.get("cert_reqs", ssl.CERT_REQUIRED))
    return options


def _verify_mode(value: Any) -> ssl.VerifyMode:
    if isinstance(value, int):
        return ssl.VerifyMode(value)
    text = str(value).strip().lower().removeprefix("cert_")
    try:
        return _VERIFY_MODES[text]
    except KeyError:
        raise ImproperlyConfigured(
            f"cert_reqs={value!r} is not one of required, optional, none "
            "(or ssl.CERT_REQUIRED, ssl.CERT_OPTIONAL, ssl.CERT_NONE)"
        ) from None


def with_server_hostname(options: bool | dict[str, Any], host: str) -> dict[str, Any]:
    """`options` checking the certificate against `host` (unless a name was given or
    the certificate is not checked at all)."""
    result = dict(options) if isinstance(options, dict) else {}
    if "server_hostname" not in result and result.get("cert_reqs") != ssl.CERT_NONE:
        result["server_hostname"] = host
    return result


def open_connection(
    params: AMQPParams,
    *,
    start: int = 0,
    on_blocked: Callable[[str], None] | None = None,
    on_unblocked: Callable[[], None] | None = None,
    write_timeout: float | None = None,
) -> tuple[amqp.Connection, int]:
    """Connect to the first reachable host, trying them in turn from `start`.

    Returns the open connection and the index of the host it reached. Raises the
    driver's exception of the last attempt; callers map it. `write_timeout` bounds a
    socket write (a server that stops reading, e.g. under a memory alarm).
    """
    from celeriac.connections.amqp_transport import Connection

    last: BaseException | None = None
    for attempt in range(len(params.hosts)):
        index = (start + attempt) % len(params.hosts)
        host, port = params.hosts[index]
        connection = Connection(
            host=f"{host}:{port}",
            userid=params.userid,
            password=params.password,
            virtual_host=params.virtual_host,
            ssl=params.ssl_for(index),
            connect_timeout=params.connect_timeout,
            heartbeat=params.heartbeat,
            login_method=params.login_method,
            on_blocked=on_blocked,
            on_unblocked=on_unblocked,
            write_timeout=write_timeout,
            client_properties={"product": "celeriac"},
        )
        try:
            connection.connect()
        except Exception as exc:
            last = exc
            _close_quietly(connection)
            if is_permanent_refusal(exc):
                raise
            logger.debug("cannot connect to %s: %s", params.describe(index), exc)
            continue
        return connection, index
    assert last is not None
    raise last


def _close_quietly(connection: amqp.Connection) -> None:
    try:
        connection.collect()
    except Exception:  # tearing down a connection that already failed
        logger.debug("error while discarding a failed connection", exc_info=True)


def close_connection(
    connection: amqp.Connection | None, *, timeout: float = 1.0, polite: bool = True
) -> None:
    """Close politely (Connection.Close, waiting up to `timeout` for the answer) if it
    is alive, else just drop the socket; never raise. `polite=False` drops the socket
    at once: for a link known dead (missed heartbeats, a broken socket), where waiting
    for an answer only delays giving it up."""
    if connection is None:
        return
    try:
        if polite and connection.connected:
            transport = connection.transport
            if transport is not None and transport.sock is not None:
                transport.sock.settimeout(timeout)
            connection.close()
            return
    except Exception:  # closing is best effort: the server cleans up
        logger.debug("error while closing an AMQP connection", exc_info=True)
    _close_quietly(connection)


def is_connection_error(exc: BaseException) -> bool:
    """The connection is gone (or unusable): reconnect and try again."""
    from amqp import exceptions

    if isinstance(exc, exceptions.ConnectionError | OSError | EOFError):
        return True
    # py-amqp raises these when a connection closed underneath a channel.
    return isinstance(exc, exceptions.RecoverableConnectionError)


def is_channel_error(exc: BaseException) -> bool:
    """The server closed one channel (406, 404, 403 ...); the connection lives on."""
    from amqp import exceptions

    return isinstance(exc, exceptions.ChannelError)


def is_permanent_refusal(exc: BaseException) -> bool:
    """Retrying cannot help: bad credentials, unknown vhost, no permission, or a
    server certificate that does not verify."""
    import ssl

    from amqp import exceptions

    return isinstance(
        exc,
        exceptions.AccessRefused
        | exceptions.InvalidPath
        | exceptions.NotAllowed
        | ssl.SSLCertVerificationError,
    )


class Backoff:
    """Exponential reconnect delays with jitter: 0.2 s, 0.4 s, ... up to `maximum`."""

    def __init__(self, *, start: float = 0.2, factor: float = 2.0, maximum: float = 5.0) -> None:
        self.start = start
        self.factor = factor
        self.maximum = maximum
        self._next = start

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * self.factor)
        # +-20% so that many clients do not reconnect in lock step after an outage.
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.start


class KeepAlive:
    """A daemon thread calling `tick()` every `interval` seconds until stopped.

    Connections that nobody reads (an idle producer, a consumer whose process is busy
    running a long task) would otherwise miss heartbeats and be closed by RabbitMQ.
    """

    def __init__(self, tick: Callable[[], None], *, interval: float, name: str) -> None:
        self._tick = tick
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._tick()
            except Exception:  # isolation boundary: keep ticking
                logger.warning("AMQP keep-alive tick failed", exc_info=True)


def keepalive_interval(heartbeat: float) -> float:
    """How often to tick so that a heartbeat goes out well within `heartbeat` seconds."""
    if heartbeat <= 0:
        return 30.0
    # py-amqp sends a heartbeat when nothing was sent for heartbeat/2; ticking four
    # times per interval keeps us inside RabbitMQ's limit even when a tick runs late.
    return max(0.5, min(15.0, heartbeat / 4))
