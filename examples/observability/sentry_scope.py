"""Sentry's scope set per task through celeriac's signals.

Sentry's own `CeleryIntegration` hooks Celery's internals, which a celeriac worker does not
have; the signals give the same: each task runs in its own isolation scope (tags and
breadcrumbs set by one task never show on another's events), tagged with the task's id
and name, and a failure is reported from inside that scope.

```python
import sentry_sdk
from celeriac.signals import worker_process_init

import sentry_scope

@worker_process_init.connect(weak=False)     # each prefork child: Sentry's transport
def start_sentry(**kwargs):                  # thread does not survive a fork
    sentry_sdk.init(dsn=..., default_integrations=False)

sentry_scope.install()
```
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import sentry_sdk

from celeriac import signals

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

_lock = threading.Lock()
# Task id -> the isolation scope entered at task_prerun, left at task_postrun.
_open: dict[str, AbstractContextManager[Any]] = {}


def install() -> None:
    """Connect the receivers (once, however often it is called)."""
    signals.task_prerun.connect(_enter, weak=False, dispatch_uid="sentry-scope-enter")
    signals.task_failure.connect(_report, weak=False, dispatch_uid="sentry-scope-report")
    signals.task_postrun.connect(_leave, weak=False, dispatch_uid="sentry-scope-leave")


def _enter(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    if task_id is None:
        return
    manager = sentry_sdk.isolation_scope()
    scope = manager.__enter__()
    scope.set_tag("celery_task_id", task_id)
    scope.set_tag("celery_task_name", getattr(task, "name", "unknown"))
    scope.set_context("celery job", {"task_id": task_id, "retries": task.request.retries})
    with _lock:
        _open[task_id] = manager


def _report(exception: BaseException | None = None, **kwargs: Any) -> None:
    # Sent while the task's scope is current: the event carries its tags.
    if exception is not None:
        sentry_sdk.capture_exception(exception)


def _leave(task_id: str | None = None, **kwargs: Any) -> None:
    with _lock:
        manager = _open.pop(task_id, None) if task_id is not None else None
    if manager is not None:
        manager.__exit__(None, None, None)
