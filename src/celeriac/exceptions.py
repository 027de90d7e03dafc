"""Every error celeriac raises, in one tree.

```
CeleriacError
├── ImproperlyConfigured          a setting, URL or missing extra that cannot work
├── NotRegistered (KeyError)      no task of that name in the registry
├── SerializationError            cannot encode or decode a payload
│   ├── ContentDisallowed         content type not in accept_content
│   └── MessageTooLarge           payload over task_max_message_size
├── InvalidTaskError              a message that is not a valid task message
├── BrokerError
│   ├── BrokerConnectionError     cannot reach the broker (after retries)
│   ├── QueueNotFound
│   └── PublishError              the broker did not take the message
├── BackendError
│   ├── ResultTimeout             AsyncResult.get timed out (also `TimeoutError`)
│   └── ResultLost                the backend lost a result it had to keep
├── TaskPredicate                 control flow raised from inside a task
│   ├── Retry
│   ├── Ignore
│   └── Reject
├── TaskError
│   ├── MaxRetriesExceededError
│   ├── TaskRevokedError
│   ├── ChordError
│   ├── IncompleteStream          AsyncResult.collect() met a result not ready
│   └── RemoteTaskError           a failure whose class we would not rebuild
├── SecurityError
└── WorkerError
    └── WorkerShutdown

Outside the tree, because a task's own code must not catch them by accident with
`except CeleriacError`: SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError
(Celery raises billiard's classes of these names, which are plain Exceptions).

Warnings: `CDeprecationWarning` (a `UserWarning`, so it is shown by default, as
Celery's of the same name) for something that works today but has a newer spelling.
```

`exc_module`/`exc_type` of these classes on the wire read `celery.exceptions` (see
`protocol/errors.py`), so stock Celery clients rebuild them too.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime

__all__ = [
    "BackendError",
    "BrokerConnectionError",
    "BrokerError",
    "CDeprecationWarning",
    "CeleriacError",
    "ChordError",
    "ContentDisallowed",
    "Ignore",
    "ImproperlyConfigured",
    "IncompleteStream",
    "InvalidTaskError",
    "MaxRetriesExceededError",
    "MessageTooLarge",
    "NotRegistered",
    "PublishError",
    "QueueNotFound",
    "Reject",
    "RemoteTaskError",
    "ResultLost",
    "ResultTimeout",
    "Retry",
    "SecurityError",
    "SerializationError",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskPredicate",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerError",
    "WorkerLostError",
    "WorkerShutdown",
]


class CeleriacError(Exception):
    """Base class of every celeriac error."""


class ImproperlyConfigured(CeleriacError):
    """A setting, URL or installed extra cannot work as given."""


class NotRegistered(KeyError, CeleriacError):
    """No task of this name is registered in the app."""

    def __str__(self) -> str:
        # KeyError quotes its argument; a task name reads better bare.
        return str(self.args[0]) if self.args else "task not registered"


class SerializationError(CeleriacError):
    """A payload could not be encoded or decoded."""


class ContentDisallowed(SerializationError):
    """The content type of a payload is not in `accept_content`."""


class MessageTooLarge(SerializationError):
    """A message body is larger than `task_max_message_size`."""


class InvalidTaskError(CeleriacError):
    """A message that cannot be a task message (bad headers, eta, body shape)."""


class BrokerError(CeleriacError):
    """A broker operation failed."""


class BrokerConnectionError(BrokerError):
    """The broker cannot be reached."""


class QueueNotFound(BrokerError):
    """A queue that must exist does not."""


class PublishError(BrokerError):
    """The broker did not take a message: nothing was queued."""


class BackendError(CeleriacError):
    """A result backend operation failed."""


class ResultTimeout(BackendError):
    """`AsyncResult.get` gave up waiting (Celery's `TimeoutError`).

    Like Celery's, it is not an `OSError` (the built-in `TimeoutError` is), so code that
    catches socket errors does not swallow it by accident.
    """


# Celery compat: `from celery.exceptions import TimeoutError` is how users catch it.
TimeoutError = ResultTimeout


class ResultLost(BackendError):
    """The result backend was unreachable for too long; the result was not stored."""


class TaskPredicate(CeleriacError):
    """Control flow raised from inside a task, handled by the worker."""


class Retry(TaskPredicate):
    """Raised by `Task.retry`: the task was sent again with a countdown.

    Args:
        message: Human readable reason (defaults to the wrapped exception).
        exc: The exception that caused the retry.
        when: Seconds (or the instant) after which the retry runs.
    """

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | datetime | None = None,
        **kwargs: Any,
    ) -> None:
        self.message = message
        self.exc = exc
        self.when = when
        super().__init__(message, exc, when, *kwargs.values())

    def humanize(self) -> str:
        if isinstance(self.when, int | float):
            return f"in {self.when:g}s"
        return f"at {self.when}"

    def __str__(self) -> str:
        if self.message:
            return self.message
        if self.exc is not None:
            return f"Retry {self.humanize()}: {self.exc!r}"
        return f"Retry {self.humanize()}"

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.message, self.exc, self.when)


class Ignore(TaskPredicate):
    """Raised by a task to stop without storing any state."""


class Reject(TaskPredicate):
    """Raised by a task to reject its message (requeue it, or dead-letter it)."""

    def __init__(self, reason: object = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)

    def __str__(self) -> str:
        return f"reject requeue={self.requeue}: {self.reason}"


class TaskError(CeleriacError):
    """A task-level failure."""


class MaxRetriesExceededError(TaskError):
    """A task asked to retry more often than its `max_retries` allows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.task_args = kwargs.pop("task_args", [])
        self.task_kwargs = kwargs.pop("task_kwargs", {})
        super().__init__(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the task's arguments when the error crosses a process boundary.
        rebuild = functools.partial(
            self.__class__, task_args=self.task_args, task_kwargs=self.task_kwargs
        )
        return rebuild, self.args


class TaskRevokedError(TaskError):
    """The task was revoked or expired before it ran."""


class ChordError(TaskError):
    """A header task of a chord failed, so the body cannot run."""


class IncompleteStream(TaskError):
    """`AsyncResult.collect()` met a result that is not ready (Celery's name)."""


class RemoteTaskError(TaskError):
    """A task failed with an exception class this process will not rebuild.

    Attributes:
        exc_type: The original class name.
        exc_module: The module the class came from.
        exc_message: The original exception's arguments.
    """

    def __init__(self, exc_type: str, exc_module: str | None, exc_message: Any) -> None:
        self.exc_type = exc_type
        self.exc_module = exc_module
        self.exc_message = exc_message
        super().__init__(exc_type, exc_module, exc_message)

    def __str__(self) -> str:
        args = self.exc_message
        text = ", ".join(str(a) for a in args) if isinstance(args, list | tuple) else str(args)
        where = f"{self.exc_module}." if self.exc_module else ""
        return f"{where}{self.exc_type}: {text}"


class SecurityError(CeleriacError):
    """Something stored or received tried to do what it must not (e.g. rebuild a
    non-exception class)."""


class WorkerError(CeleriacError):
    """A worker-level failure."""


class WorkerShutdown(WorkerError):
    """Raised inside a worker to make it shut down."""


class SoftTimeLimitExceeded(Exception):
    """The task ran past its soft time limit; raised inside the task."""


class TimeLimitExceeded(Exception):
    """The task ran past its hard time limit; its process was killed."""


class WorkerLostError(Exception):
    """The process running the task died, more often than the redelivery cap allows."""


class CDeprecationWarning(UserWarning):
    """Works for now, but has a newer spelling (e.g. a Celery 3 upper-case setting)."""
