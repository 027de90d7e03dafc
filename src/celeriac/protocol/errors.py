"""Exceptions to and from the wire form Celery stores: `{exc_type, exc_message, exc_module}`.

Rebuilding is deliberately narrow: a stored failure turns back into its own class only
when that class is already loaded in this process (a module in `sys.modules`, never
imported on behalf of stored data) and is an `Exception` subclass. Everything else comes
back as `RemoteTaskError` carrying the original name and arguments, so nothing stored in
a backend can make a reader import or run arbitrary code.
"""

from __future__ import annotations

import builtins
import inspect
import sys
from types import ModuleType
from typing import Any

from celeriac import exceptions as _exc
from celeriac.exceptions import SerializationError
from celeriac.protocol.serializers import json_dumps

__all__ = ["CELERY_EXC_MODULE", "decode_exception", "encode_exception"]

# Celery compat: where stock Celery keeps the classes celeriac has under the same meaning.
# Ours are written under Celery's module and name (what `prepare_exception` writes for
# Celery's own), so stock clients rebuild them; either name reads back as ours.
CELERY_EXC_MODULE = "celery.exceptions"
BILLIARD_EXC_MODULE = "billiard.exceptions"
_CELERY_NAMES: dict[str, tuple[str, str]] = {
    name: (CELERY_EXC_MODULE, name)
    for name in (
        "ChordError",
        "TaskRevokedError",
        "NotRegistered",
        "MaxRetriesExceededError",
        "Retry",
        "Ignore",
        "Reject",
        "InvalidTaskError",
        "ImproperlyConfigured",
        "SecurityError",
        "TaskError",
        "TaskPredicate",
        "QueueNotFound",
    )
}
# celery.exceptions re-exports billiard's classes of these names.
_CELERY_NAMES.update(
    (name, (BILLIARD_EXC_MODULE, name))
    for name in ("TimeLimitExceeded", "SoftTimeLimitExceeded", "WorkerLostError")
)
# Celery's `TimeoutError` is our `ResultTimeout`.
_CELERY_NAMES["ResultTimeout"] = (CELERY_EXC_MODULE, "TimeoutError")
_OUR_MODULES = frozenset({CELERY_EXC_MODULE, BILLIARD_EXC_MODULE, "celeriac.exceptions"})
# Control flow of the worker itself, never a task's failure: a stored one stays remote.
# (Celery's WorkerShutdown is a SystemExit, which no stock reader should raise either.)
_NEVER_REBUILT = frozenset({"WorkerShutdown"})


def _jsonable(value: Any) -> Any:
    try:
        json_dumps(value)
    except SerializationError:
        return repr(value)
    return value


def encode_exception(exc: BaseException) -> dict[str, Any]:
    """Return the stored form of `exc` (Celery's layout for non-pickle serializers)."""
    if isinstance(exc, _exc.RemoteTaskError):
        # Pass a failure we could not rebuild on unchanged, under its original name.
        message = exc.exc_message
        return {
            "exc_type": exc.exc_type,
            "exc_message": [_jsonable(arg) for arg in message]
            if isinstance(message, list | tuple)
            else _jsonable(message),
            "exc_module": exc.exc_module,
        }
    cls = type(exc)
    module, qualname = cls.__module__, cls.__qualname__
    if module == "celeriac.exceptions" and qualname in _CELERY_NAMES:
        module, qualname = _CELERY_NAMES[qualname]
    args = [_jsonable(arg) for arg in exc.args]
    return {"exc_type": qualname, "exc_message": args, "exc_module": module}


def _static_attribute(owner: object, name: str) -> object:
    # Never getattr(): a module `__getattr__`, a property or a metaclass hook would run
    # code on behalf of stored data. Plain namespace lookups only.
    if isinstance(owner, ModuleType):
        return vars(owner).get(name)
    try:
        return inspect.getattr_static(owner, name)
    except AttributeError:
        return None


def _lookup_class(module: str | None, qualname: str) -> type[Exception] | None:
    if module in _OUR_MODULES:
        if qualname in _NEVER_REBUILT:
            return None
        candidate: object = _static_attribute(_exc, qualname)
    elif module in (None, "builtins", "exceptions"):
        candidate = _static_attribute(builtins, qualname)
    else:
        loaded = sys.modules.get(module) if module else None
        if loaded is None:
            return None
        candidate = loaded
        for part in qualname.split("."):
            candidate = _static_attribute(candidate, part)
            if candidate is None:
                return None
    if isinstance(candidate, type) and issubclass(candidate, Exception):
        return candidate
    return None


def decode_exception(data: Any) -> Exception:
    """Rebuild an exception from its stored form, safely (see the module docstring).

    Anything that is not a well-formed stored exception also becomes `RemoteTaskError`.
    """
    if isinstance(data, BaseException):  # pickle backends store the object itself
        if isinstance(data, Exception):
            return data
        return _exc.RemoteTaskError(type(data).__name__, type(data).__module__, list(data.args))
    if not isinstance(data, dict) or not isinstance(data.get("exc_type"), str):
        return _exc.RemoteTaskError("UnknownError", None, [repr(data)])
    qualname: str = data["exc_type"]
    module = data.get("exc_module")
    message = data.get("exc_message", [])
    module_name = module if isinstance(module, str) else None
    cls = _lookup_class(module_name, qualname)
    if cls is None:
        return _exc.RemoteTaskError(qualname, module_name, message)
    try:
        if cls is _exc.RemoteTaskError:
            return _exc.RemoteTaskError(qualname, module_name, message)
        if isinstance(message, list | tuple):
            return cls(*message)
        return cls(message)
    except Exception:  # isolation boundary: a constructor that wants other arguments
        return _exc.RemoteTaskError(qualname, module_name, message)
