"""Autodiscovery of task modules: `<package>.tasks` for each package given, or for each
installed Django app (with `DJANGO_SETTINGS_MODULE` set)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.contrib.django.fixup import DjangoFixup

__all__ = ["Packages", "discovery_packages", "django_fixup", "import_related"]

# What `autodiscover_tasks` takes: packages, a callable giving them, or None (Django's apps).
Packages = Sequence[str] | Callable[[], Sequence[str]] | None


def django_fixup(app: Celeriac) -> DjangoFixup | None:
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return None
    from celeriac.contrib.django.fixup import fixup

    return fixup(app)


def discovery_packages(packages: Packages, django: DjangoFixup | None) -> Sequence[str]:
    """The packages to search: `packages` (called when callable), else Django's
    installed apps."""
    if callable(packages):
        return list(packages())
    if packages is not None:
        return list(packages)
    if django is None:
        raise ImproperlyConfigured(
            "autodiscover_tasks() without packages searches the installed Django apps, "
            "but DJANGO_SETTINGS_MODULE is not set: pass the packages, e.g. "
            "app.autodiscover_tasks(['proj.orders', 'proj.billing'])"
        )
    return django.installed_apps()


def import_related(packages: Sequence[str], related_name: str) -> None:
    """Import `<package>.<related_name>` for each package; a missing one is skipped."""
    for name in packages:
        package = _app_package(name)
        module_name = f"{package}.{related_name}" if related_name else package
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only a missing `<pkg>.tasks` is fine; a broken import inside it is not.
            if exc.name != module_name:
                raise


def _app_package(name: str) -> str:
    """The package of an `INSTALLED_APPS` entry: itself, or the `name` of the AppConfig
    class it points to ("billing.apps.BillingConfig" → "billing")."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        parent, _, attr = name.rpartition(".")
        if not parent or exc.name != name:
            raise
        config = getattr(importlib.import_module(parent), attr, None)
        package = getattr(config, "name", None)
        if not isinstance(package, str):
            raise
        return package
    return name
