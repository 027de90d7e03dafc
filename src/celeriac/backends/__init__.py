"""Result backend URL → class. Driver-backed backends are imported only when asked for."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac._imports import load_scheme_class

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
    "sentinel": ("celeriac.backends.redis", "RedisBackend", "redis"),
    "rpc": ("celeriac.backends.rpc", "RPCBackend", "amqp"),
    # Django projects: results through the ORM (celeriac.contrib.django).
    "django-db": ("celeriac.contrib.django.backend", "DjangoBackend", "django"),
}


def backend_class(url: str) -> type[ResultBackend]:
    """The backend class for `url`.

    Raises:
        ImproperlyConfigured: unknown scheme, or the backend's extra is not installed.
    """
    cls: type[ResultBackend] = load_scheme_class(
        url, BACKEND_SCHEMES, kind="result backend", example="redis://localhost:6379/1"
    )
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
