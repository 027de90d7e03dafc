"""The Django fix-up: what a worker needs to run a Django project's tasks.

Applied to every app made while `DJANGO_SETTINGS_MODULE` is set (Celery compat: Celery
applies its own under the same condition). It

- calls `django.setup()` when the app is finalized (a worker starting, the first task
  looked up by name), before the task modules are imported, so they can import models;
- makes `autodiscover_tasks()` with no packages mean every installed Django app;
- closes the database connections the worker process holds before it forks prefork
  children, drops the ones a child inherited (without touching the parent's sockets),
  and closes stale connections before and after each task, as a request would;
- gives the app Django's `TIME_ZONE` when the `timezone` setting is not set.

`DEBUG = True` leaks memory in a long-running worker (Django keeps every query): the
worker says so when it starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

from celeriac import signals
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac

__all__ = ["DjangoFixup", "fixup"]

logger = logging.getLogger("celeriac.worker")

# The environment variable that says "this is a Django project" (Django's own).
SETTINGS_VARIABLE = "DJANGO_SETTINGS_MODULE"


def fixup(app: Celeriac) -> DjangoFixup | None:
    """The fix-up for `app` when `DJANGO_SETTINGS_MODULE` is set, else None.

    Raises:
        ImproperlyConfigured: the variable is set but Django is not installed.
    """
    if not os.environ.get(SETTINGS_VARIABLE):
        return None
    try:
        import django  # noqa: F401
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"{SETTINGS_VARIABLE} is set but Django is not installed: install Django "
            f"(pip install 'celeriac[django]') or unset {SETTINGS_VARIABLE}"
        ) from exc
    return DjangoFixup(app).install()


class DjangoFixup:
    """Django's side of one app (see the module docstring)."""

    def __init__(self, app: Celeriac) -> None:
        self.app = app

    def install(self) -> DjangoFixup:
        # Module-level receivers: connected once, whatever the number of apps.
        signals.worker_init.connect(_on_worker_init)
        signals.worker_ready.connect(_on_worker_ready)
        signals.worker_process_init.connect(_on_worker_process_init)
        signals.task_prerun.connect(_on_task_boundary)
        signals.task_postrun.connect(_on_task_boundary)
        return self

    def setup(self) -> None:
        """`django.setup()`, once: the app registry ready, models importable."""
        import django
        from django.apps import apps

        if not apps.ready:
            django.setup()

    def installed_apps(self) -> list[str]:
        """The packages of every installed Django app (what `autodiscover_tasks()`
        searches when given none)."""
        self.setup()
        from django.apps import apps

        return [config.name for config in apps.get_app_configs()]

    def timezone(self) -> str | None:
        """Django's `TIME_ZONE` (None when Django uses UTC without saying so)."""
        from django.conf import settings

        value = getattr(settings, "TIME_ZONE", None)
        return value if isinstance(value, str) and value else None


def close_connections() -> None:
    """Close every database connection this thread holds."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        with contextlib.suppress(Exception):  # an already broken one is closed anyway
            connection.close()


def _on_worker_init(**kwargs: Any) -> None:
    # Before the pool forks: a connection opened during start-up (an app's ready()) must
    # not be shared by the children.
    close_connections()


def _on_worker_ready(**kwargs: Any) -> None:
    from django.conf import settings

    if settings.DEBUG:
        logger.warning(
            "Django's DEBUG is on: it keeps every query in memory, which leaks in a worker; "
            "never run a production worker with DEBUG = True"
        )


def _on_worker_process_init(**kwargs: Any) -> None:
    """In a new prefork child: forget the connections inherited from the supervisor.

    Closing them the usual way would send the server a goodbye on a socket the parent
    still uses; the child closes its copy of the file descriptor first, so only the
    child's side goes away.
    """
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        raw = connection.connection
        if raw is None:
            continue
        with contextlib.suppress(Exception):
            os.close(raw.fileno())
        with contextlib.suppress(Exception):  # the socket is gone: errors are expected
            connection.close()
        connection.connection = None


def _on_task_boundary(sender: Any = None, **kwargs: Any) -> None:
    # Celery compat: what Django does around a request, done around a task (eager runs
    # happen inside the caller's transaction and are left alone).
    request = getattr(sender, "request", None)
    if request is not None and getattr(request, "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()
