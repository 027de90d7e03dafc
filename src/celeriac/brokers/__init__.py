"""Transport URL → broker class. Driver-backed brokers are imported only when asked for."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac._imports import load_scheme_class, scheme_of

if TYPE_CHECKING:
    from collections.abc import Mapping

    from celeriac._time import Clock
    from celeriac.brokers.base import Broker

__all__ = ["BROKER_SCHEMES", "broker_class", "create_broker", "scheme_of"]

# scheme → (module, class, extra that installs its driver or None)
BROKER_SCHEMES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("celeriac.brokers.memory", "MemoryBroker", None),
    "sqlite": ("celeriac.brokers.sqlite", "SQLiteBroker", None),
    "redis": ("celeriac.brokers.redis.broker", "RedisBroker", "redis"),
    "rediss": ("celeriac.brokers.redis.broker", "RedisBroker", "redis"),
    "redis+socket": ("celeriac.brokers.redis.broker", "RedisBroker", "redis"),
    "sentinel": ("celeriac.brokers.redis.broker", "RedisBroker", "redis"),
    "amqp": ("celeriac.brokers.amqp.broker", "AMQPBroker", "amqp"),
    "amqps": ("celeriac.brokers.amqp.broker", "AMQPBroker", "amqp"),
    "pyamqp": ("celeriac.brokers.amqp.broker", "AMQPBroker", "amqp"),
}


def broker_class(url: str) -> type[Broker]:
    """The broker class for `url`.

    Raises:
        ImproperlyConfigured: unknown scheme, or the transport's extra is not installed.
    """
    cls: type[Broker] = load_scheme_class(
        url, BROKER_SCHEMES, kind="broker", example="redis://localhost:6379/0"
    )
    return cls


def create_broker(
    url: str,
    *,
    transport_options: Mapping[str, Any] | None = None,
    consumer_id: str | None = None,
    clock: Clock | None = None,
) -> Broker:
    """Instantiate the broker for `url` (not yet connected)."""
    return broker_class(url)(
        url, transport_options=transport_options, consumer_id=consumer_id, clock=clock
    )
