"""Load objects named by strings: `pkg.module:attr`, `pkg.module.attr` or `pkg.module`.

Also the one loader of a transport's class from its URL scheme, shared by the broker and
result-backend tables (`brokers/__init__.py`, `backends/__init__.py`).
"""

from __future__ import annotations

import importlib
from typing import Any

from celeriac._urls import redact_url
from celeriac.exceptions import ImproperlyConfigured

__all__ = ["import_object", "load_scheme_class", "scheme_of"]


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


def scheme_of(url: str) -> str:
    """The lower-case scheme of `url` ("" when it has none)."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def load_scheme_class(
    url: str,
    schemes: dict[str, tuple[str, str, str | None]],
    *,
    kind: str,
    example: str,
) -> Any:
    """The class serving `url` in `schemes` (scheme → module, class, extra or None).

    `kind` names the family in messages ("broker", "result backend"); `example` is a URL
    of that family shown when the scheme is unknown.

    Raises:
        ImproperlyConfigured: unknown scheme, or the transport's extra is not installed.
    """
    scheme = scheme_of(url)
    try:
        module_name, class_name, extra = schemes[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in schemes)
        raise ImproperlyConfigured(
            f"unknown {kind} URL scheme in {redact_url(url)!r}: use one of {known} "
            f"(for example {example} or sqlite:///celeriac.db)"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is not None and (
            exc.name == module_name or module_name.startswith(exc.name + ".")
        ):
            # Our own module is missing, not its driver: no extra would help.
            raise ImproperlyConfigured(
                f"the {scheme}:// {kind} is not available in this celeriac installation "
                f"({module_name} is missing)"
            ) from exc
        if extra is None:
            raise
        raise ImproperlyConfigured(
            f'the {scheme}:// {kind} needs its driver ({exc.name}): pip install "celeriac[{extra}]"'
        ) from exc
    return getattr(module, class_name)
