"""Exceptions to and from the wire form Celery stores: `{exc_type, exc_message, exc_module}`.

Rebuilding is deliberately narrow: a stored failure turns back into its own class only
when that class is already loaded in this process (a module in `sys.modules`, never
imported on behalf of stored data) and is an `Exception` subclass. Everything else comes
back as `RemoteTaskError` carrying the original name and arguments, so nothing stored in
a backend can make a reader import or run arbitrary code.
"""

from __future__ import annotations

import builtins
import sys
from typing import Any

from celeriac import exceptions as _exc
from celeriac.exceptions import SerializationError
from celeriac.protocol.serializers import json_dumps

__all__ = ["CELERY_EXC_MODULE", "decode_exception", "encode_exception"]

# Celery compat: these classes live in celery.exceptions (or billiard.exceptions) for stock
# peers; we write them under celery.exceptions and read either name back as ours.
CELERY_EXC_MODULE = "celery.exceptions"
_CELERY_NAMES = frozenset(
    {
        "ChordError",
        "TaskRevokedError",
        "NotRegistered",
        "MaxRetriesExceededError",
        "Retry",
        "Ignore",
        "Reject",
        "TimeLimitExceeded",
        "SoftTimeLimitExceeded",
        "WorkerLostError",
        "InvalidTaskError",
        "ImproperlyConfigured",
        "SecurityError",
        "TaskError",
    }
)
_OUR_MODULES = frozenset({"celery.exceptions", "billiard.exceptions", "celeriac.exceptions"})


def _jsonable(value: Any) -> Any:
    try:
        json_dumps(value)
    except SerializationError:
        return repr(value)
    return value


def encode_exception(exc: BaseException) -> dict[str, Any]:
    """Return the stored form of `exc` (Celery's layout for non-pickle serializers)."""
    cls = type(exc)
    module = cls.__module__
    if module == "celeriac.exceptions" and cls.__name__ in _CELERY_NAMES:
        module = CELERY_EXC_MODULE
    if isinstance(exc, _exc.RemoteTaskError):
        # Pass a failure we could not rebuild on unchanged, under its original name.
        return {
            "exc_type": exc.exc_type,
            "exc_message": _jsonable(exc.exc_message),
            "exc_module": exc.exc_module,
        }
    args = [_jsonable(arg) for arg in exc.args]
    return {"exc_type": cls.__qualname__, "exc_message": args, "exc_module": module}


def _lookup_class(module: str | None, qualname: str) -> type[Exception] | None:
    if module in _OUR_MODULES:
        candidate = getattr(_exc, qualname, None)
    elif module in (None, "builtins", "exceptions"):
        candidate = getattr(builtins, qualname, None)
    else:
        loaded = sys.modules.get(module) if module else None
        if loaded is None:
            return None
        candidate = loaded
        for part in qualname.split("."):
            candidate = getattr(candidate, part, None)
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
