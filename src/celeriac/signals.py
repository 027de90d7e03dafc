"""Signals with Celery's names, for hooking into the life of tasks and workers.

```python
from celeriac.signals import task_failure, worker_process_init

@worker_process_init.connect
def reconnect_database(**kwargs):
    db.connect()          # each prefork child makes its own connections

@task_failure.connect
def report(sender=None, task_id=None, exception=None, **kwargs):
    sentry.capture_exception(exception)
```

Receivers get `sender` and the named arguments Celery sends (and should accept
`**kwargs`). A receiver that raises is logged and the others still run; only the
control-flow exceptions of a task (`Retry`, `Ignore`, `Reject`) pass through, as in
Celery. A signal nobody connected to costs one attribute check.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar, overload

from celeriac.exceptions import TaskPredicate

__all__ = [
    "Signal",
    "after_task_publish",
    "before_task_publish",
    "task_failure",
    "task_postrun",
    "task_prerun",
    "task_received",
    "task_rejected",
    "task_retry",
    "task_revoked",
    "task_success",
    "task_unknown",
    "worker_init",
    "worker_process_init",
    "worker_process_shutdown",
    "worker_ready",
    "worker_shutdown",
]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class Signal:
    """A named hook: `connect` receivers, `send` to call them all."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.receivers: list[tuple[Callable[..., Any], Any]] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"

    @overload
    def connect(self, receiver: F, *, sender: Any = None) -> F: ...

    @overload
    def connect(self, receiver: None = None, *, sender: Any = None) -> Callable[[F], F]: ...

    def connect(self, receiver: F | None = None, *, sender: Any = None) -> Any:
        """Connect `receiver` (usable bare or as `@signal.connect(sender=...)`).

        Args:
            receiver: The callable; called as `receiver(sender=..., signal=..., **named)`.
            sender: Only call it when sent by this sender (a task name or object).
        """

        def register(function: F) -> F:
            with self._lock:
                if (function, sender) not in self.receivers:
                    self.receivers = [*self.receivers, (function, sender)]
            return function

        if receiver is not None:
            return register(receiver)
        return register

    def disconnect(self, receiver: Callable[..., Any], *, sender: Any = None) -> None:
        with self._lock:
            self.receivers = [r for r in self.receivers if r != (receiver, sender)]

    def send(self, sender: Any = None, **named: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Call every receiver; return `(receiver, response)` pairs (errors logged)."""
        responses: list[tuple[Callable[..., Any], Any]] = []
        for receiver, only_from in self.receivers:
            if only_from is not None and not _matches(only_from, sender):
                continue
            try:
                response = receiver(sender=sender, signal=self, **named)
            except TaskPredicate:
                raise
            except Exception as exc:  # isolation boundary: one receiver must not stop others
                logger.exception("Signal %s receiver %r raised", self.name, receiver)
                response = exc
            responses.append((receiver, response))
        return responses


def _matches(expected: Any, sender: Any) -> bool:
    if expected is sender or expected == sender:
        return True
    return bool(getattr(sender, "name", None) == expected)


# Producer side.
before_task_publish = Signal("before_task_publish")
after_task_publish = Signal("after_task_publish")

# A task's life in a worker.
task_received = Signal("task_received")
task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_failure = Signal("task_failure")
task_retry = Signal("task_retry")
task_revoked = Signal("task_revoked")
task_rejected = Signal("task_rejected")
task_unknown = Signal("task_unknown")

# A worker's life.
worker_init = Signal("worker_init")
worker_ready = Signal("worker_ready")
worker_shutdown = Signal("worker_shutdown")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown")
