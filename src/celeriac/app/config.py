"""Settings: Celery's lower-case setting names and defaults, validated as they are set.

`app.conf` is a `Settings`: attribute and item access (`conf.task_serializer`,
`conf["task_serializer"]`), `update()`, and `config_from_object()` on the app feed it.
A known name with a value that cannot work raises `ImproperlyConfigured` saying what to
write instead. Names that are not honoured never pass silently:

- Celery 3's upper-case names (`BROKER_URL`) are read under their new name with a
  `CDeprecationWarning` naming it;
- a Celery setting celeriac does not honour is refused with what to do instead
  (`celeriac.app.celery_settings.UNSUPPORTED`);
- an unknown name close to a known one, or starting like a Celery setting (`task_`,
  `worker_`, ...), is refused with "did you mean". Other names are kept (users put their
  own settings there, as with Celery).

Where celeriac's default differs from Celery's it is on purpose and marked
`# celeriac:` (e.g. `task_acks_late` is on: a task whose worker dies runs again).
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from celeriac.app import celery_settings
from celeriac.app.setting_checks import BARE_BACKENDS, VALIDATORS
from celeriac.exceptions import CDeprecationWarning, ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["DEFAULTS", "Settings", "new_setting_name", "settings_of"]

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
    # TLS options for the broker (and the rpc:// backend) and for a Redis result backend:
    # True or a dict of Celery's keys; False/None leave them to the URL.
    "broker_use_ssl": False,
    "redis_backend_use_ssl": None,
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
    # RabbitMQ: "quorum" declares the default queue (and, with the second setting, every
    # other queue celeriac creates) as a replicated quorum queue.
    "task_default_queue_type": "classic",
    "task_create_missing_queue_type": "classic",
    "task_inherit_parent_priority": False,
    # Kombu-style Queue objects (duck-typed); see celeriac.app.queues.
    "task_queues": None,
    "task_annotations": None,
    # execution
    "task_acks_late": True,  # celeriac: Celery's default is False
    "task_acks_on_failure_or_timeout": True,
    # None and True: a task whose worker process died runs again (up to
    # task_redelivery_limit times); False: it is recorded as WorkerLostError at once.
    "task_reject_on_worker_lost": None,
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
    "worker_autoscaler": "celery.worker.autoscale:Autoscaler",
    "worker_concurrency": None,
    "worker_pool": "prefork",
    "worker_prefetch_multiplier": 4,
    "worker_max_tasks_per_child": None,
    "worker_max_memory_per_child": None,
    "worker_disable_rate_limits": False,
    "worker_send_task_events": False,
    "worker_enable_remote_control": True,
    "worker_hijack_root_logger": True,
    # celeriac: a consuming process whose presence heartbeat (every fraction of a second)
    # is older than this is presumed dead and any live consumer returns what it held.
    # Tens of seconds, not one: a live process can go quiet for a while (a task holding
    # the GIL in C code starves the heartbeat thread, a swapping or overloaded machine, a
    # stop-the-world pause, a Redis failover), and reaping a live one runs its tasks twice.
    "worker_lost_after": 30.0,
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
    # the class of every task the app makes (a Task subclass or "module:Class")
    "task_cls": None,
    # Celery's default -s (here the name of beat's state in the broker's store).
    "beat_schedule_filename": "celerybeat-schedule",
    "beat_scheduler": "celeriac.beat.scheduler:Scheduler",
    "beat_max_loop_interval": 0,
    "beat_cron_starting_deadline": None,
    # celeriac: a run missed while no beat was alive is sent once when one starts.
    "beat_catch_up": True,
    # celeriac: how long the leading beat's lease lasts without renewal (seconds).
    "beat_lease_seconds": 10.0,
    # message signing (app.setup_security): file paths, as in Celery
    "security_key": None,
    "security_key_password": None,
    "security_certificate": None,
    "security_cert_store": None,
    "security_digest": "sha256",
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
            new = celery_settings.new_name_of(name)
            if new is None:
                raise ImproperlyConfigured(
                    f"setting names are lower case (Celery 4+ style): write "
                    f"{new_setting_name(name)!r} instead of {name!r}"
                )
            warnings.warn(
                f"setting {name} is Celery 3's name for {new}: it is read as {new}; "
                f"rename it to {new}",
                CDeprecationWarning,
                stacklevel=_user_stacklevel(),
            )
            name = new
        if name not in DEFAULTS:
            check_unknown(name, value)
        validator = VALIDATORS.get(name)
        if validator is not None:
            value = validator(name, value)
        if name in celery_settings.FIXED:
            accepted, advice = celery_settings.FIXED[name]
            if value not in accepted:
                raise ImproperlyConfigured(
                    f"setting {name}={value!r} is not honoured by celeriac (only "
                    f"{' or '.join(repr(v) for v in accepted)}): {advice}"
                )
        self._values[name] = value
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
        from celeriac._urls import redact

        lines = []
        for key, value in sorted(self.changes().items()):
            lines.append(f"{key}: {redact(value, key)!r}")
        return "\n".join(lines)


def new_setting_name(name: str) -> str:
    """The lower-case setting that an upper-case (Celery 3 style) `name` became.

    Falls back to `name.lower()` when no Celery setting had that name.
    """
    return celery_settings.new_name_of(name) or name.lower()


# Every name a setting can have: honoured, refused, or an app argument.
KNOWN_NAMES = frozenset(DEFAULTS) | frozenset(celery_settings.OLD_NAMES)


def check_unknown(name: str, value: Any) -> None:
    """Refuse `name` (not a setting celeriac honours) unless it is the user's own.

    Raises:
        ImproperlyConfigured: a Celery setting celeriac does not honour, or a likely
            misspelling of a setting.
    """
    if name in celery_settings.APP_ARGUMENTS:
        return
    advice = celery_settings.UNSUPPORTED.get(name)
    if advice is not None:
        if value in celery_settings.ACCEPTED_VALUES.get(name, ()):
            return
        raise ImproperlyConfigured(
            f"setting {name} is a Celery setting that celeriac does not honour: {advice}"
        )
    close = celery_settings.closest_setting(name, KNOWN_NAMES)
    if close is not None:
        raise ImproperlyConfigured(f"unknown setting {name!r}: did you mean {close!r}?")
    if name.startswith(celery_settings.CELERY_PREFIXES):
        raise ImproperlyConfigured(
            f"unknown setting {name!r}: no Celery or celeriac setting has this name "
            f"(see docs/configuration.md); a setting of your own must not start with "
            f"{', '.join(celery_settings.CELERY_PREFIXES)}"
        )


def settings_of(obj: Any, *, namespace: str | None = None) -> dict[str, Any]:
    """The settings an object holds, by name: lower-case attributes or keys, else (with
    `namespace="CELERY"`) upper-case names prefixed `CELERY_`.

    Raises:
        ImproperlyConfigured: Celery 3 upper-case names mixed with lower-case ones.
    """
    items: Mapping[str, Any]
    if isinstance(obj, Mapping):
        items = obj
    else:
        items = {k: getattr(obj, k) for k in dir(obj) if not k.startswith("_")}
    values: dict[str, Any] = {}
    if namespace:
        prefix = namespace.rstrip("_") + "_"
        for key, value in items.items():
            if key.startswith(prefix):
                values[key[len(prefix) :].lower()] = value
    else:
        for key, value in items.items():
            if key == key.lower() and not callable(value) and not _is_module(value):
                values[key] = value
        # Celery compat: Celery 3's upper-case names are read too (with a warning);
        # other upper-case names (module constants, Django settings) are not settings.
        values.update(old_style_settings(items))
    return values


def old_style_settings(items: Mapping[str, Any]) -> dict[str, Any]:
    """The Celery 3 upper-case settings among `items` to read, by their old names.

    Celery compat (5.7 `detect_settings`): the style most names use wins; a name of the
    other style is an error unless the same setting is given in the winning style too
    (then it is ignored). The error lists what to rename.

    Raises:
        ImproperlyConfigured: old and new names are mixed.
    """
    _check_celery_looking(items)
    old = [k for k in items if celery_settings.new_name_of(k) is not None]
    if not old:
        return {}
    new = [k for k in items if k in celery_settings.OLD_NAMES]
    if len(old) > len(new):
        renames = {k: celery_settings.OLD_NAMES[k] for k in new}
    else:
        renames = {k: celery_settings.new_name_of(k) or k for k in old}
    left = sorted(k for k, twin in renames.items() if twin not in items)
    if left:
        raise ImproperlyConfigured(
            "the configuration mixes Celery 3 upper-case setting names with lower-case "
            "ones; rename these:\n" + "\n".join(f"  {k} -> {renames[k]}" for k in left)
        )
    return {k: items[k] for k in old} if len(old) > len(new) else {}


# The prefixes of Celery 3's upper-case setting names.
_OLD_PREFIXES = ("CELERY_", "CELERYD_", "CELERYBEAT_", "BROKER_")


def _check_celery_looking(items: Mapping[str, Any]) -> None:
    """Refuse upper-case names that look like Celery settings but are none (Celery
    would drop them silently).

    Raises:
        ImproperlyConfigured: a namespaced name read without `namespace="CELERY"`, or a
            misspelt Celery 3 name.
    """
    old_names = frozenset(celery_settings.OLD_NAMES.values())
    for key in items:
        if not key.startswith(_OLD_PREFIXES) or key in old_names or key != key.upper():
            continue
        if key.startswith("CELERY_") and key[len("CELERY_") :].lower() in KNOWN_NAMES:
            raise ImproperlyConfigured(
                f"setting {key} is a namespaced name: load it with "
                f"config_from_object(..., namespace='CELERY'), or write "
                f"{key[len('CELERY_') :].lower()}"
            )
        close = celery_settings.closest_setting(key, old_names)
        hint = f": did you mean {close!r}?" if close else ": no Celery setting has this name"
        raise ImproperlyConfigured(f"unknown setting {key!r}{hint}")


def _user_stacklevel() -> int:
    """The `stacklevel` (for a warning raised by the caller) of the first frame outside
    celeriac: the user's line that set the setting."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame = frame.f_back
        level += 1
    return level


def _from_environment(name: str) -> str | None:
    for variable in ENVIRONMENT.get(name, ()):
        value = os.environ.get(variable)
        if value and name == "result_backend":
            value = BARE_BACKENDS.get(value, value)
        if value:
            if "://" not in value:
                raise ImproperlyConfigured(
                    f"environment variable {variable}={value!r} is not a URL: "
                    "write e.g. redis://localhost:6379/0"
                )
            return value
    return None


def _is_module(value: Any) -> bool:
    return type(value).__name__ == "module"
