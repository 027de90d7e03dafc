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
`**kwargs`). As in Celery, a receiver is held by a weak reference unless connected with
`weak=False` (a lambda or closure nothing else keeps is dropped), and `dispatch_uid=`
connects a receiver once however often its module is imported. A receiver that raises
is logged and the others still run; only the control-flow exceptions of a task (`Retry`,
`Ignore`, `Reject`) pass through, as in Celery. A signal nobody connected to costs one
attribute check.
"""

from __future__ import annotations

import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar, overload

from celeriac.exceptions import TaskPredicate

__all__ = [
    "Signal",
    "after_setup_logger",
    "after_setup_task_logger",
    "after_task_publish",
    "before_task_publish",
    "setup_logging",
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
    "worker_process_lost",
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
        # (lookup key, receiver or weak reference to it, sender): replaced, never mutated,
        # so `send` iterates a snapshot without a lock.
        self._entries: list[tuple[Hashable, Callable[..., Any] | _Ref, Any]] = []
        self._lock = threading.Lock()
        # `receivers` of the entries list it was made from, when that holds no weak
        # reference (a cache of weakly held receivers would keep them alive).
        self._live: tuple[list[Any], list[tuple[Callable[..., Any], Any]]] = ([], [])

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"

    @property
    def receivers(self) -> list[tuple[Callable[..., Any], Any]]:
        """The live receivers, as `(receiver, sender)` pairs (empty and cheap when
        nothing is connected: the worker checks it before building a signal's arguments)."""
        entries = self._entries
        if not entries:
            return []
        made_from, live = self._live
        if made_from is entries:
            return list(live)
        live = []
        weak = False
        for _, held, sender in entries:
            weak = weak or isinstance(held, weakref.ref)
            receiver = _resolve(held)
            if receiver is not None:
                live.append((receiver, sender))
        if not weak:
            self._live = (entries, live)
        return live

    @overload
    def connect(
        self,
        receiver: F,
        *,
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
        retry: bool = False,
    ) -> F: ...

    @overload
    def connect(
        self,
        receiver: None = None,
        *,
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
        retry: bool = False,
    ) -> Callable[[F], F]: ...

    def connect(
        self,
        receiver: F | None = None,
        *,
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
        retry: bool = False,
    ) -> Any:
        """Connect `receiver` (usable bare or as `@signal.connect(sender=...)`).

        Args:
            receiver: The callable; called as `receiver(sender=..., signal=..., **named)`.
            sender: Only call it when sent by this sender (a task name or object).
            weak: Celery compat: hold the receiver by a weak reference, so a receiver
                nothing else keeps alive (a lambda, a closure) is dropped when it is
                garbage collected. Pass `weak=False` to keep it.
            dispatch_uid: A key for this receiver: connecting again with the same key
                (and sender) does nothing, so a module imported twice connects once.
            retry: Celery's retrying receivers are not supported (refused).

        Raises:
            ImproperlyConfigured: `retry=True`.
        """
        if retry:
            from celeriac.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                f"{self.name}.connect(retry=True) is not supported: retry inside the receiver"
            )

        def register(function: F) -> F:
            key = _lookup_key(function, sender, dispatch_uid)
            held: Callable[..., Any] | _Ref = _weak(function, self._forget) if weak else function
            with self._lock:
                if not any(entry[0] == key for entry in self._entries):
                    self._entries = [*self._entries, (key, held, sender)]
            return function

        if receiver is not None:
            return register(receiver)
        return register

    def disconnect(
        self,
        receiver: Callable[..., Any] | None = None,
        *,
        sender: Any = None,
        dispatch_uid: Hashable | None = None,
    ) -> bool:
        """Disconnect a receiver (by itself, or by its `dispatch_uid`); True if it was
        connected."""
        if receiver is None and dispatch_uid is None:
            raise TypeError("disconnect() needs the receiver or its dispatch_uid")
        key = _lookup_key(receiver, sender, dispatch_uid)
        with self._lock:
            before = len(self._entries)
            self._entries = [e for e in self._entries if e[0] != key]
            return len(self._entries) != before

    def _forget(self, reference: _Ref) -> None:
        # Called by the garbage collector when a weakly held receiver dies.
        with self._lock:
            self._entries = [e for e in self._entries if e[1] is not reference]

    def send(self, sender: Any = None, **named: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Call every receiver; return `(receiver, response)` pairs (errors logged)."""
        responses: list[tuple[Callable[..., Any], Any]] = []
        for _, held, only_from in self._entries:
            if only_from is not None and not _matches(only_from, sender):
                continue
            receiver = _resolve(held)
            if receiver is None:
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


_Ref = weakref.ref[Any] | weakref.WeakMethod[Any]


def _weak(function: Callable[..., Any], forget: Callable[[_Ref], None]) -> _Ref:
    if inspect.ismethod(function):
        return weakref.WeakMethod(function, forget)
    return weakref.ref(function, forget)


def _resolve(held: Callable[..., Any] | _Ref) -> Callable[..., Any] | None:
    if isinstance(held, weakref.ref):
        target: Callable[..., Any] | None = held()
        return target
    return held


def _lookup_key(
    receiver: Callable[..., Any] | None, sender: Any, dispatch_uid: Hashable | None
) -> Hashable:
    # Celery compat: a receiver is known by its dispatch_uid, else by its identity (a
    # bound method by its object and function), together with the sender.
    if dispatch_uid is not None:
        who: Hashable = ("uid", dispatch_uid)
    elif inspect.ismethod(receiver):
        who = (id(receiver.__self__), id(receiver.__func__))
    else:
        who = id(receiver)
    return (who, _sender_key(sender))


def _sender_key(sender: Any) -> Hashable:
    try:
        hash(sender)
    except TypeError:
        return id(sender)
    return sender  # type: ignore[no-any-return]


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
# celeriac: sent in the prefork supervisor when a child died without being asked to
# (crashed or killed, stopped at a hard time limit, or stopped by a revoke with
# terminate): `pid`, `exitcode` (None when a signal ended it), `signum` (None when it
# exited), the `task_id` and `task_name` it was running (None when idle), and `reason`:
# "crashed", "time_limit" or "terminated". Celery has no such signal.
worker_process_lost = Signal("worker_process_lost")

# Logging set-up in a worker: with a `setup_logging` receiver connected, the worker
# configures no logging at all (the receiver does); otherwise it configures the root and
# task loggers and then sends the two `after_` signals with each logger.
setup_logging = Signal("setup_logging")
after_setup_logger = Signal("after_setup_logger")
after_setup_task_logger = Signal("after_setup_task_logger")
