"""Result backend URL → class. Driver-backed backends are imported only when asked for."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from celeriac._urls import redact_url
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from datetime import timedelta

    from celeriac._time import Clock
    from celeriac.backends.base import ResultBackend

__all__ = ["BACKEND_SCHEMES", "backend_class", "create_backend"]

# Celery's default result_expires: one day (the same as ResultBackend's default).
DEFAULT_RESULT_EXPIRES = 86400.0

# scheme → (module, class, extra that installs its driver or None)
BACKEND_SCHEMES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("celeriac.backends.memory", "MemoryBackend", None),
    "sqlite": ("celeriac.backends.sqlite", "SQLiteBackend", None),
    "redis": ("celeriac.backends.redis", "RedisBackend", "redis"),
    "rediss": ("celeriac.backends.redis", "RedisBackend", "redis"),
    "redis+socket": ("celeriac.backends.redis", "RedisBackend", "redis"),
    "rpc": ("celeriac.backends.rpc", "RPCBackend", "amqp"),
}


def backend_class(url: str) -> type[ResultBackend]:
    """The backend class for `url`.

    Raises:
        ImproperlyConfigured: unknown scheme, or the backend's extra is not installed.
    """
    scheme, sep, _ = url.partition("://")
    try:
        module_name, class_name, extra = BACKEND_SCHEMES[scheme.lower() if sep else ""]
    except KeyError:
        known = ", ".join(f"{s}://" for s in BACKEND_SCHEMES)
        raise ImproperlyConfigured(
            f"unknown result backend URL scheme in {redact_url(url)!r}: use one of {known} "
            "(for example redis://localhost:6379/1 or sqlite:///celeriac.db)"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is not None and (
            exc.name == module_name or module_name.startswith(exc.name + ".")
        ):
            # Our own module is missing, not its driver: no extra would help.
            raise ImproperlyConfigured(
                f"the {scheme}:// result backend is not available in this celeriac installation "
                f"({module_name} is missing)"
            ) from exc
        if extra is None:
            raise
        raise ImproperlyConfigured(
            f"the {scheme}:// result backend needs its driver ({exc.name}): "
            f'pip install "celeriac[{extra}]"'
        ) from exc
    cls: type[ResultBackend] = getattr(module, class_name)
    return cls


def create_backend(
    url: str,
    *,
    serializer: str = "json",
    accept: Iterable[str] = ("json",),
    expires: float | timedelta | None = DEFAULT_RESULT_EXPIRES,
    transport_options: Mapping[str, Any] | None = None,
    clock: Clock | None = None,
) -> ResultBackend:
    """Instantiate the result backend for `url` (not yet connected)."""
    return backend_class(url)(
        url,
        serializer=serializer,
        accept=accept,
        expires=expires,
        transport_options=transport_options,
        clock=clock,
    )
