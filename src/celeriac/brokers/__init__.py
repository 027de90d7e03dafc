"""Transport URL → broker class. Driver-backed brokers are imported only when asked for."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from celeriac._urls import redact_url
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Mapping

    from celeriac._time import Clock
    from celeriac.brokers.base import Broker

__all__ = ["BROKER_SCHEMES", "broker_class", "create_broker", "scheme_of"]

# scheme → (module, class, extra that installs its driver or None)
BROKER_SCHEMES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("celeriac.brokers.memory", "MemoryBroker", None),
    "sqlite": ("celeriac.brokers.sqlite", "SQLiteBroker", None),
    "redis": ("celeriac.brokers.redis", "RedisBroker", "redis"),
    "rediss": ("celeriac.brokers.redis", "RedisBroker", "redis"),
    "redis+socket": ("celeriac.brokers.redis", "RedisBroker", "redis"),
    "amqp": ("celeriac.brokers.amqp.broker", "AMQPBroker", "amqp"),
    "amqps": ("celeriac.brokers.amqp.broker", "AMQPBroker", "amqp"),
    "pyamqp": ("celeriac.brokers.amqp.broker", "AMQPBroker", "amqp"),
}


def scheme_of(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def broker_class(url: str) -> type[Broker]:
    """The broker class for `url`.

    Raises:
        ImproperlyConfigured: unknown scheme, or the transport's extra is not installed.
    """
    scheme = scheme_of(url)
    try:
        module_name, class_name, extra = BROKER_SCHEMES[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in BROKER_SCHEMES)
        raise ImproperlyConfigured(
            f"unknown broker URL scheme in {redact_url(url)!r}: use one of {known} "
            "(for example redis://localhost:6379/0 or sqlite:///celeriac.db)"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is not None and (
            exc.name == module_name or module_name.startswith(exc.name + ".")
        ):
            # Our own module is missing, not its driver: no extra would help.
            raise ImproperlyConfigured(
                f"the {scheme}:// broker is not available in this celeriac installation "
                f"({module_name} is missing)"
            ) from exc
        if extra is None:
            raise
        raise ImproperlyConfigured(
            f'the {scheme}:// broker needs its driver ({exc.name}): pip install "celeriac[{extra}]"'
        ) from exc
    cls: type[Broker] = getattr(module, class_name)
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
