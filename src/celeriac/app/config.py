"""Settings: Celery's lower-case setting names and defaults, validated as they are set.

`app.conf` is a `Settings`: attribute and item access (`conf.task_serializer`,
`conf["task_serializer"]`), `update()`, and `config_from_object()` on the app feed it.
Unknown lower-case names are kept (users put their own settings there, as with Celery);
a known name with a value that cannot work raises `ImproperlyConfigured` saying what to
write instead.

Where celeriac's default differs from Celery's it is on purpose and marked
`# celeriac:` (e.g. `task_acks_late` is on: a task whose worker dies runs again).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any

from celeriac.exceptions import ImproperlyConfigured

__all__ = ["DEFAULTS", "Settings", "new_setting_name"]

# One MiB: larger bodies are refused (and dead-lettered by workers).
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024

DEFAULTS: dict[str, Any] = {
    # broker
    "broker_url": None,
    "broker_transport_options": {},
    "broker_connection_retry": True,
    "broker_connection_max_retries": 100,
    "broker_connection_timeout": 4.0,
    "broker_heartbeat": 120.0,
    # results
    "result_backend": None,
    "result_backend_transport_options": {},
    "result_serializer": "json",
    "result_accept_content": None,
    "result_expires": 86400.0,
    "result_extended": False,
    # celeriac: how long a worker keeps retrying a result write while the backend is
    # down before it records the result as lost.
    "result_backend_max_retry_time": 60.0,
    # serialization
    "task_serializer": "json",
    "accept_content": ["json"],
    "task_compression": None,
    # routing
    "task_default_queue": "celery",
    "task_default_exchange": None,
    "task_default_routing_key": None,
    "task_default_priority": None,
    "task_queue_max_priority": None,
    "task_routes": None,
    "task_create_missing_queues": True,
    "task_inherit_parent_priority": False,
    # execution
    "task_acks_late": True,  # celeriac: Celery's default is False
    "task_acks_on_failure_or_timeout": True,
    "task_time_limit": None,
    "task_soft_time_limit": None,
    "task_ignore_result": False,
    "task_store_errors_even_if_ignored": False,
    "task_track_started": False,
    "task_default_rate_limit": None,
    "task_always_eager": False,
    "task_eager_propagates": False,
    "task_store_eager_result": False,
    "task_publish_retry": True,
    "task_publish_retry_policy": {
        "max_retries": 3,
        "interval_start": 0.0,
        "interval_step": 0.2,
        "interval_max": 1.0,
    },
    # celeriac: refuse bodies larger than this (bytes), producer and worker side.
    "task_max_message_size": DEFAULT_MAX_MESSAGE_SIZE,
    # celeriac: a message whose worker process died this many times while running it is
    # dead-lettered and recorded as WorkerLostError.
    "task_redelivery_limit": 3,
    # worker
    "worker_concurrency": None,
    "worker_pool": "prefork",
    "worker_prefetch_multiplier": 4,
    "worker_max_tasks_per_child": None,
    "worker_max_memory_per_child": None,
    "worker_disable_rate_limits": False,
    "worker_send_task_events": False,
    "worker_enable_remote_control": True,
    "worker_hijack_root_logger": True,
    # remote control and events (names of the broadcast exchanges, as Celery's)
    "control_exchange": "celery",
    "event_exchange": "celeryev",
    "task_send_sent_event": False,
    # time and modules
    "timezone": None,
    "enable_utc": True,
    "include": (),
    "imports": (),
    "beat_schedule": {},
}

SERIALIZERS = ("json", "msgpack", "pickle")
POOLS = ("prefork", "threads", "solo", "asyncio")


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


def _url(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or "://" not in value:
        raise _fail(name, value, "write a URL such as redis://localhost:6379/0")
    return value


def _mapping(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(name, value, "write a dict")
    return dict(value)


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


def _compression(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if value not in ("zlib", "gzip", "bzip2", "bz2", "lzma", "xz"):
        raise _fail(name, value, "use zlib, bzip2 or lzma, or None")
    return str(value)


_VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "broker_url": _url,
    "broker_transport_options": _mapping,
    "broker_connection_retry": _bool,
    "broker_connection_max_retries": _positive_int,
    "broker_connection_timeout": _optional_seconds,
    "broker_heartbeat": _optional_seconds,
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
    "task_inherit_parent_priority": _bool,
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
    "timezone": _optional_str,
    "enable_utc": _bool,
    "include": _modules,
    "imports": _modules,
    "beat_schedule": _mapping,
}

# Environment variables that override settings (Celery's names are read too, so a
# project moving from Celery keeps working).
ENVIRONMENT = {
    "broker_url": ("CELERIAC_BROKER_URL", "CELERY_BROKER_URL"),
    "result_backend": ("CELERIAC_RESULT_BACKEND", "CELERY_RESULT_BACKEND"),
}


class Settings:
    """The app's settings, by Celery's lower-case names.

    Args:
        values: Initial settings; validated like every later change.
    """

    version: int
    _values: dict[str, Any]

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_values", {})
        # Bumped on every change, so readers can cache derived values cheaply.
        object.__setattr__(self, "version", 0)
        for key, value in DEFAULTS.items():
            # Copies: `conf.accept_content.append(...)` must not change every other app.
            self._values[key] = copy.deepcopy(value) if isinstance(value, dict | list) else value
        if values:
            self.update(values)

    # -- access -------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            # Private and dunder lookups (copy, pickle) must not reach `_values`, which
            # does not exist yet on an instance being rebuilt.
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no setting named {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __setitem__(self, name: str, value: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ImproperlyConfigured(f"setting names are non-empty strings, got {name!r}")
        if name != name.lower():
            raise ImproperlyConfigured(
                f"setting names are lower case (Celery 4+ style): write {new_setting_name(name)!r} "
                f"instead of {name!r}"
            )
        validator = _VALIDATORS.get(name)
        self._values[name] = validator(name, value) if validator else value
        object.__setattr__(self, "version", self.version + 1)

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def update(self, values: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        """Set several settings at once (each validated)."""
        for source in (values or {}, more):
            for key, value in source.items():
                self[key] = value

    def changes(self) -> dict[str, Any]:
        """Settings that differ from the defaults."""
        return {k: v for k, v in self._values.items() if DEFAULTS.get(k, object()) != v}

    # -- derived values -------------------------------------------------------------

    def broker_url_resolved(self) -> str | None:
        """`broker_url`, unless an environment variable overrides it."""
        return _from_environment("broker_url") or self.broker_url

    def result_backend_resolved(self) -> str | None:
        return _from_environment("result_backend") or self.result_backend

    @property
    def result_accept(self) -> list[str]:
        accept = self.result_accept_content
        return list(accept) if accept is not None else list(self.accept_content)

    def humanize(self) -> str:
        """The changed settings, one per line, secrets hidden."""
        from celeriac._urls import redact_url

        lines = []
        for key, value in sorted(self.changes().items()):
            if isinstance(value, str) and "://" in value:
                value = redact_url(value)
            lines.append(f"{key}: {value!r}")
        return "\n".join(lines)


# Celery 3 upper-case names whose new name does not follow the prefix rules below.
_OLD_NAMES_IRREGULAR = {
    "CELERY_TASK_RESULT_EXPIRES": "result_expires",
    "CELERY_MESSAGE_COMPRESSION": "task_compression",
    "CELERY_EAGER_PROPAGATES_EXCEPTIONS": "task_eager_propagates",
    "CELERY_SEND_EVENTS": "worker_send_task_events",
    "CELERY_SEND_TASK_SENT_EVENT": "task_send_sent_event",
}
# Old prefix → candidate new prefixes, tried in order.
_OLD_PREFIXES = (
    ("CELERYD_", ("worker_", "")),
    ("CELERYBEAT_", ("beat_",)),
    ("CELERY_", ("", "task_", "result_", "worker_")),
    ("BROKER_", ("broker_",)),
)


def new_setting_name(name: str) -> str:
    """The lower-case setting that an upper-case (Celery 3 style) `name` became.

    Falls back to `name.lower()` when no known setting matches.
    """
    if name in _OLD_NAMES_IRREGULAR:
        return _OLD_NAMES_IRREGULAR[name]
    lower = name.lower()
    if lower in DEFAULTS:
        return lower
    for prefix, replacements in _OLD_PREFIXES:
        if name.startswith(prefix):
            rest = name[len(prefix) :].lower()
            for replacement in replacements:
                if replacement + rest in DEFAULTS:
                    return replacement + rest
    return lower


def _from_environment(name: str) -> str | None:
    for variable in ENVIRONMENT.get(name, ()):
        value = os.environ.get(variable)
        if value:
            if "://" not in value:
                raise ImproperlyConfigured(
                    f"environment variable {variable}={value!r} is not a URL: "
                    "write e.g. redis://localhost:6379/0"
                )
            return value
    return None
