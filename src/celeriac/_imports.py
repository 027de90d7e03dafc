"""Load objects named by strings: `pkg.module:attr`, `pkg.module.attr` or `pkg.module`."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["import_object"]


def import_object(path: str) -> Any:
    """Import `path` and return the object it names.

    `pkg.mod:attr` names an attribute explicitly; without a colon the whole string is
    tried as a module first, then as `module.attr`.

    Raises:
        ImportError: `path` is malformed, the module cannot be imported, or it has no
            such attribute.
    """
    if not isinstance(path, str) or not path.strip(":. "):
        raise ImportError(
            f"cannot import {path!r}: write 'package.module' or 'package.module:name'"
        )
    if ":" in path:
        module_name, _, attr = path.partition(":")
        module = _import_module(module_name)
        obj: Any = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None
        return obj
    try:
        return _import_module(path)
    except ModuleNotFoundError as exc:
        module_name, dot, attr = path.rpartition(".")
        # Only fall back to module.attr when it is `path` itself that is missing.
        if not dot or exc.name not in (path, None):
            raise
        module = _import_module(module_name)
        try:
            return getattr(module, attr)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except (ValueError, TypeError) as exc:  # empty or relative names
        raise ImportError(f"cannot import {name!r}: {exc}") from exc
