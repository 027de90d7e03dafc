"""The value checks of the settings: one validator per setting name.

A validator takes the setting's name and the value being set, and returns the value to
store (normalized: seconds as floats, module lists as tuples) or raises
`ImproperlyConfigured` saying what to write instead. `Settings` (`celeriac.app.config`)
runs the one `VALIDATORS` names for a setting on every change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

from celeriac.exceptions import ImproperlyConfigured

__all__ = ["BARE_BACKENDS", "POOLS", "SERIALIZERS", "VALIDATORS"]

SERIALIZERS = ("json", "msgpack", "pickle", "auth")
POOLS = ("prefork", "threads", "solo", "asyncio", "gevent")


def _fail(name: str, value: Any, expected: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"setting {name}={value!r} is not usable: {expected}")


def _optional_seconds(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise _fail(name, value, "write a number of seconds (e.g. 30 or 2.5) or None")
    return float(value)


def _positive_seconds(name: str, value: Any, *, minimum: float = 0.0) -> float:
    seconds = _optional_seconds(name, value)
    if seconds is None or seconds <= 0 or seconds < minimum:
        floor = f">= {minimum:g}" if minimum else "> 0"
        raise _fail(name, value, f"write a number of seconds {floor} (e.g. 30)")
    return float(seconds)


def _positive_int(name: str, value: Any, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(name, value, "write a whole number >= 0" + (" or None" if allow_none else ""))
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, value, "write True or False")
    return value


def _serializer(name: str, value: Any) -> str:
    if value not in SERIALIZERS:
        raise _fail(name, value, f"use one of {', '.join(SERIALIZERS)}")
    return str(value)


def _accept(name: str, value: Any) -> list[str] | None:
    if value is None and name == "result_accept_content":
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise _fail(name, value, "write a list such as ['json'] or ['application/json']")
    items = list(value)
    from celeriac.protocol.serializers import normalize_accept

    normalize_accept(items, setting=name)  # raises with the offending entry named
    return items


# Celery compat: result backends named without "://" (django-celery-results' spelling).
BARE_BACKENDS = {"django-db": "django-db://"}


def _url(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if name == "result_backend" and value in BARE_BACKENDS:
        return BARE_BACKENDS[value]
    if not isinstance(value, str) or "://" not in value:
        raise _fail(name, value, "write a URL such as redis://localhost:6379/0")
    return value


def _mapping(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(name, value, "write a dict")
    return dict(value)


def _tls(name: str, value: Any) -> bool | dict[str, Any] | None:
    if value is None or isinstance(value, bool):
        return value
    if not isinstance(value, Mapping):
        raise _fail(
            name,
            value,
            "write True or a dict such as {'ssl_cert_reqs': ssl.CERT_REQUIRED, "
            "'ssl_ca_certs': '/etc/ssl/ca.pem'}",
        )
    return dict(value)


def _queue_type(name: str, value: Any) -> str:
    if value not in ("classic", "quorum"):
        raise _fail(name, value, "use 'classic' or 'quorum'")
    return str(value)


def _queue_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(name, value, "write a queue name such as 'celery'")
    return value


def _priority(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise _fail(name, value, "write a priority 0-9 (or up to 255 on RabbitMQ) or None")
    return value


def _is_route_pairs(item: Any) -> bool:
    # Celery's ordered form of a route table: [(name or pattern, route), ...].
    return isinstance(item, list | tuple) and all(
        isinstance(pair, list | tuple) and len(pair) == 2 for pair in item
    )


def _routes(name: str, value: Any) -> Any:
    if value is None or isinstance(value, Mapping | str) or callable(value):
        return value
    if isinstance(value, list | tuple) and all(
        isinstance(item, Mapping | str) or callable(item) or _is_route_pairs(item) for item in value
    ):
        return list(value)
    raise _fail(
        name,
        value,
        "write a dict {'task.name': {'queue': 'q'}}, a router function, or a list of these",
    )


def _pool(name: str, value: Any) -> str:
    if value == "eventlet":
        raise _fail(
            name,
            value,
            "eventlet is deprecated by its own maintainers and not supported: use gevent "
            "for sync I/O-bound tasks, or asyncio for async def tasks",
        )
    if value not in POOLS:
        raise _fail(name, value, f"use one of {', '.join(POOLS)}")
    return str(value)


def _rate(name: str, value: Any) -> Any:
    if value is None:
        return None
    from celeriac.app.ratelimit import parse_rate

    parse_rate(value)
    return value


def _modules(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    # Materialize first: a generator would be used up by the check below.
    names = tuple(value) if isinstance(value, Iterable) else None
    if names is None or not all(isinstance(v, str) for v in names):
        raise _fail(name, value, "write a list of module names")
    return names


def _optional_str(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _fail(name, value, "write a string or None")
    return value


def _optional_secret(name: str, value: Any) -> str | bytes | None:
    if value is not None and not isinstance(value, str | bytes):
        raise _fail(name, value, "write a string, bytes or None")
    return value


def _digest_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(name, value, "write a hash name such as 'sha256'")
    return value


def _compression(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if value not in ("zlib", "gzip", "bzip2", "bz2", "lzma", "xz"):
        raise _fail(name, value, "use zlib, bzip2 or lzma, or None")
    return str(value)


def _task_class(name: str, value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value  # a "module:Class" path is imported when the first task is made
    from celeriac.app.task import Task

    if not (isinstance(value, type) and issubclass(value, Task)):
        raise _fail(name, value, "write a subclass of celeriac.Task or its 'module:Class' path")
    return value


def _dotted_or_class(name: str, value: Any) -> Any:
    if isinstance(value, type) or (isinstance(value, str) and value):
        return value
    raise _fail(name, value, "write a class or its dotted path ('module:Class')")


def _schedule_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(name, value, "write a name such as 'celerybeat-schedule'")
    return value


def _task_queues(name: str, value: Any) -> Any:
    if value is None:
        return None
    from celeriac.app.queues import parse_queues

    parse_queues(value)  # raises if unusable
    return value


def _annotations(name: str, value: Any) -> Any:
    if value is None:
        return None
    from celeriac.app.annotations import parse_annotations

    try:
        parse_annotations(value)
    except ImproperlyConfigured as exc:
        raise _fail(name, value, str(exc)) from exc
    return value


VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "broker_url": _url,
    "broker_transport_options": _mapping,
    "broker_connection_retry": _bool,
    "broker_connection_max_retries": _positive_int,
    "broker_connection_timeout": _optional_seconds,
    "broker_heartbeat": _optional_seconds,
    "broker_use_ssl": _tls,
    "redis_backend_use_ssl": _tls,
    "result_backend": _url,
    "result_backend_transport_options": _mapping,
    "result_serializer": _serializer,
    "result_accept_content": _accept,
    "result_expires": _optional_seconds,
    "result_extended": _bool,
    "result_backend_max_retry_time": _optional_seconds,
    "task_serializer": _serializer,
    "accept_content": _accept,
    "task_compression": _compression,
    "task_default_queue": _queue_name,
    "task_default_exchange": _optional_str,
    "task_default_routing_key": _optional_str,
    "task_default_priority": _priority,
    "task_queue_max_priority": _priority,
    "task_routes": _routes,
    "task_create_missing_queues": _bool,
    "task_default_queue_type": _queue_type,
    "task_create_missing_queue_type": _queue_type,
    "task_inherit_parent_priority": _bool,
    "task_queues": _task_queues,
    "task_annotations": _annotations,
    "task_reject_on_worker_lost": lambda n, v: None if v is None else _bool(n, v),
    "task_acks_late": _bool,
    "task_acks_on_failure_or_timeout": _bool,
    "task_time_limit": _optional_seconds,
    "task_soft_time_limit": _optional_seconds,
    "task_ignore_result": _bool,
    "task_store_errors_even_if_ignored": _bool,
    "task_track_started": _bool,
    "task_default_rate_limit": _rate,
    "task_always_eager": _bool,
    "task_eager_propagates": _bool,
    "task_store_eager_result": _bool,
    "task_publish_retry": _bool,
    "task_publish_retry_policy": _mapping,
    "task_max_message_size": lambda n, v: _positive_int(n, v, allow_none=True),
    "task_redelivery_limit": lambda n, v: _positive_int(n, v, allow_none=False),
    "worker_concurrency": _positive_int,
    "worker_pool": _pool,
    "worker_prefetch_multiplier": lambda n, v: _positive_int(n, v, allow_none=False),
    "worker_max_tasks_per_child": _positive_int,
    "worker_max_memory_per_child": _positive_int,
    "worker_disable_rate_limits": _bool,
    "worker_send_task_events": _bool,
    "worker_enable_remote_control": _bool,
    "task_send_sent_event": _bool,
    "worker_hijack_root_logger": _bool,
    "worker_lost_after": lambda n, v: _positive_seconds(n, v, minimum=1.0),
    "timezone": _optional_str,
    "enable_utc": _bool,
    "include": _modules,
    "imports": _modules,
    "beat_schedule": _mapping,
    "task_cls": _task_class,
    "beat_schedule_filename": _schedule_name,
    "beat_scheduler": _dotted_or_class,
    "beat_max_loop_interval": _optional_seconds,
    "beat_cron_starting_deadline": _optional_seconds,
    "beat_catch_up": _bool,
    "beat_lease_seconds": _positive_seconds,
    "security_key": _optional_str,
    "security_key_password": _optional_secret,
    "security_certificate": _optional_str,
    "security_cert_store": _optional_str,
    "security_digest": _digest_name,
}
