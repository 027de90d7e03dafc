"""Helpers shared by the test suites: waiting, services, ids."""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import quote, unquote, urlparse

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

REDIS_URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("CELERIAC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
# A role that may create databases (`.ci/postgres` makes it); tests make their own.
POSTGRES_URL = os.environ.get(
    "CELERIAC_TEST_POSTGRES_URL", "postgresql://celeriac:celeriac@127.0.0.1:5432/postgres"
)


def full(value: object, *marks: pytest.MarkDecorator) -> Any:
    """A parameter that runs only in the full profile (`TEST_PROFILE=full`): the same path
    as the parameter kept in the default run, on another broker, pool or prefetch."""
    return pytest.param(value, marks=[pytest.mark.full, *marks])


# `broker_env` parameters for a test whose code under test is the same on every broker:
# Redis in the default run, SQLite and RabbitMQ in the full profile.
ONE_BROKER = ["redis", full("sqlite"), full("amqp", pytest.mark.rabbitmq)]


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Return the first truthy value of `predicate()`, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate!r}")
        time.sleep(interval)


def unique(prefix: str = "t") -> str:
    """A short unique name for queues, keys and ids of one test."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def fail_import(monkeypatch: pytest.MonkeyPatch, module: str, missing: str) -> None:
    """Make importing `module` by `importlib.import_module` fail as if `missing` were not
    installed."""
    real_import_module = importlib.import_module

    def fake(name: str, package: str | None = None) -> Any:
        if name == module:
            raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)
        return real_import_module(name, package)

    monkeypatch.setattr(importlib, "import_module", fake)


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    try:
        with socket.create_connection((host, parsed.port or default_port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, url: str, default_port: int) -> None:
    """Skip when the service is down locally; fail when CI is set (CI must have it)."""
    if _reachable(url, default_port):
        return
    message = f"{name} is not reachable at {url}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI needs it running")
    pytest.skip(message)


def require_programs(*names: str) -> None:
    """Skip when a program a test starts is not installed; fail when CI is set."""
    missing = [name for name in names if shutil.which(name) is None]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI needs it")
    pytest.skip(message)


def require_redis() -> str:
    require_service("Redis", REDIS_URL, 6379)
    return REDIS_URL


def require_rabbitmq() -> str:
    require_service("RabbitMQ", AMQP_URL, 5672)
    return AMQP_URL


def require_postgres() -> str:
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    return POSTGRES_URL


def amqp_connection_args(url: str = AMQP_URL) -> dict[str, str]:
    """Keyword arguments of `amqp.Connection` for one AMQP URL (the test setting by default).

    `amqp://u:p@h:5672//` and `amqp://u:p@h:5672/` are the default virtual host `/`, as
    in kombu; anything else after the first `/` is the (percent-decoded) virtual host.
    """
    parsed = urlparse(url)
    return {
        "host": f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 5672}",
        "userid": unquote(parsed.username or "guest"),
        "password": unquote(parsed.password or "guest"),
        "virtual_host": unquote(parsed.path[1:]) or "/",
    }


def amqp_url(*, password: str | None = None, virtual_host: str | None = None) -> str:
    """The test AMQP URL with another password (to be refused) or virtual host."""
    args = amqp_connection_args()
    vhost = args["virtual_host"] if virtual_host is None else virtual_host
    secret = args["password"] if password is None else password
    path = "/" if vhost == "/" else quote(vhost, safe="")
    return f"amqp://{quote(args['userid'], safe='')}:{quote(secret, safe='')}@{args['host']}/{path}"


def capability_skip(implementation: object, lacks: str) -> NoReturn:
    """Skip a contract test whose feature `implementation` does not have, by design.

    Not a missing server: this skip stands under CI (unlike `require_service`, which fails
    there), and is visible in the report with the class name, e.g. "AMQPBroker has no
    leases". That the flag itself is right is pinned in `tests/unit/*/test_capabilities.py`.
    """
    pytest.skip(f"{type(implementation).__name__} has no {lacks}")


def delete_redis_keys(url: str, prefix: str) -> None:
    """Delete every key under `prefix` on the Redis at `url` (a test's own keys only)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
