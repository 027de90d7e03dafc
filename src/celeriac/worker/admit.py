"""Admission: decode a delivery and decide what becomes of it before anything runs.

`Admission.check(delivery)` returns a verdict:

- `Run(call, task)`: run it (the common case: one small object, nothing else);
- dead-letter it: `Undecodable` (cannot be read, content type refused, too large, no
  headers), `DeadLetter` (unknown task, arguments that do not fit, the redelivery cap
  reached), `Expired` (past its `expires`);
- `Defer`: hand it back to the broker until its ETA;
- drop it (ack without running): `Revoked`, or `Finished` (a redelivered copy of a task
  whose final result is already stored).

The checks read the registry, the settings, the revocations this process knows and,
for redelivered messages only, the result backend; they send, store and ack nothing, so
a verdict can be tested with plain `Message` values. `settle.py` carries out every
verdict but `Run`; `execute.py` runs the rest. Also here: `Request` (what passed) and
the `Context` a task sees, built from its call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.app.context import Context
from celeriac.exceptions import (
    BackendError,
    ContentDisallowed,
    InvalidTaskError,
    MessageTooLarge,
    NotRegistered,
    SerializationError,
    WorkerLostError,
)
from celeriac.protocol.codec import TaskCall, decode_task
from celeriac.protocol.serializers import normalize_accept

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from celeriac.app.base import Celeriac
    from celeriac.app.task import Task
    from celeriac.backends.base import ResultMeta
    from celeriac.brokers.base import Delivery
    from celeriac.worker.revocations import Revocations

__all__ = [
    "HOLD_SECONDS",
    "Admission",
    "DeadLetter",
    "Defer",
    "Expired",
    "Finished",
    "Refusal",
    "Request",
    "Revoked",
    "Run",
    "Undecodable",
    "Verdict",
    "context_for",
    "describe_error",
]

logger = logging.getLogger("celeriac.worker")

# A message due within this many seconds is held here instead of going back to the broker.
HOLD_SECONDS = 0.05
# Longest reason kept for a refused message (the log line and the dead letter).
REASON_CHARS = 1000


def describe_error(exc: BaseException, *, with_type: bool = True) -> str:
    """`Type: message` of `exc`, cut to `REASON_CHARS`; never raises (a message built
    from hostile input may itself fail to format)."""
    try:
        text = str(exc)
    except Exception as failure:  # isolation boundary: formatting hostile input
        text = f"<message not printable: {type(failure).__name__}>"
    if len(text) > REASON_CHARS:
        text = text[:REASON_CHARS] + f"... ({len(text) - REASON_CHARS} more characters)"
    return f"{type(exc).__name__}: {text}" if with_type else text


@dataclass(slots=True)
class Run:
    """Run `task` with `call`."""

    call: TaskCall
    task: Task[Any, Any]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Dead-letter: the message cannot be read as a task (`exc` says why)."""

    exc: Exception


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Dead-letter, and fail the task with `exc` (unknown task, bad arguments, crash cap)."""

    call: TaskCall
    exc: Exception
    reason: str


@dataclass(frozen=True, slots=True)
class Expired:
    """Dead-letter as REVOKED: it was due to run before `call.expires`."""

    call: TaskCall


@dataclass(frozen=True, slots=True)
class Defer:
    """Hand it back to the broker until `eta` (it came early)."""

    call: TaskCall
    eta: datetime


@dataclass(frozen=True, slots=True)
class Revoked:
    """Drop: revoked, so not run (what follows it fails with `TaskRevokedError`)."""

    call: TaskCall


@dataclass(frozen=True, slots=True)
class Finished:
    """Drop: a redelivered copy of a task whose final result `meta` is stored."""

    call: TaskCall
    meta: ResultMeta


#: Every verdict but `Run`: what `settle.Settler.refuse` carries out.
Refusal = Undecodable | DeadLetter | Expired | Defer | Revoked | Finished
Verdict = Run | Refusal


class Admission:
    """Decodes deliveries and checks them.

    Args:
        app: The app (registry and settings; its result backend for redelivered copies).
        revocations: The revocations this process knows.
        broker_counts_crashes: The broker counts the deaths of the processes that held a
            message (`Delivery.crashes`); otherwise they come from the backend's ledger.
        local_crashes: Deaths counted by this worker's supervisor, for when neither the
            broker nor the result backend can count them (RabbitMQ with rpc:// results).
    """

    def __init__(
        self,
        app: Celeriac,
        revocations: Revocations,
        *,
        broker_counts_crashes: bool,
        local_crashes: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.revocations = revocations
        self.broker_counts_crashes = broker_counts_crashes
        self.local_crashes: Mapping[str, int] = local_crashes or {}
        conf = app.conf
        self.accept = normalize_accept(conf.accept_content)
        self.max_size: int | None = conf.task_max_message_size
        self.redelivery_limit: int = conf.task_redelivery_limit

    def check(self, delivery: Delivery) -> Verdict:
        """The verdict on `delivery`. A message due within `HOLD_SECONDS` is waited for
        here and runs.

        Never raises for what a message holds: any error while reading or checking it
        (a decoder bug, a number too large for a float, nesting too deep to format) is
        an `Undecodable` verdict, so the message is dead-lettered with the reason
        instead of coming back forever."""
        try:
            return self._check(delivery)
        except Exception as exc:  # isolation boundary: bad input must not loop
            return Undecodable(exc)

    def _check(self, delivery: Delivery) -> Verdict:
        now = self.app.now()
        try:
            call = decode_task(
                delivery.message, accept=self.accept, max_size=self.max_size, now=now
            )
        except (ContentDisallowed, MessageTooLarge, SerializationError, InvalidTaskError) as exc:
            return Undecodable(exc)

        task = self.app.tasks.get(call.name)
        if task is None:
            return DeadLetter(
                call,
                NotRegistered(call.name),
                f"unknown task {call.name}: is the module that defines it imported by "
                "the worker (-A / include)?",
            )

        try:
            task.check_arguments(call.args, call.kwargs)
        except TypeError as exc:
            return DeadLetter(call, exc, describe_error(exc, with_type=False))

        crashes = self._crashes(delivery, call)
        # The task's own limit is read only for a message whose process died (rare).
        if crashes >= self.redelivery_limit or (
            crashes and crashes >= task.resolve_redelivery_limit()
        ):
            error = WorkerLostError(
                f"the worker process running {call.name}[{call.id}] died "
                f"{crashes} times; it is not run again"
            )
            return DeadLetter(
                call, error, f"WorkerLostError: process died {crashes} times running it"
            )

        if delivery.redelivered and self.app.backend.supports_lookup:
            done = self._finished(call)
            if done is not None:
                return Finished(call, done)

        if call.expires is not None and call.expires <= now:
            return Expired(call)

        if call.id in self.revocations:
            return Revoked(call)

        if call.eta is not None:
            wait = (call.eta - now).total_seconds()
            if wait > HOLD_SECONDS:
                # A message that came early (a stock producer, a clock ahead of ours)
                # waits on the broker, never in this process.
                return Defer(call, call.eta)
            if wait > 0:
                time.sleep(wait)
        return Run(call, task)

    def _crashes(self, delivery: Delivery, call: TaskCall) -> int:
        """How often a process died running this message. Brokers that cannot count it
        (RabbitMQ) leave it to the result backend's crash ledger; read only for
        redelivered messages, so the normal path pays nothing."""
        if self.broker_counts_crashes or not delivery.redelivered:
            return delivery.crashes
        backend = self.app.backend
        if not backend.supports_crash_ledger:
            return max(delivery.crashes, self.local_crashes.get(call.id, 0))
        try:
            return max(delivery.crashes, backend.crash_count(call.id))
        except BackendError as exc:  # unreachable: no traceback, the breaker logs it
            logger.warning("Task %s[%s]: cannot read its crash count (%s)", call.name, call.id, exc)
            return delivery.crashes
        except Exception:  # isolation boundary: the cap is a safety net, not a must
            logger.warning(
                "Task %s[%s]: cannot read its crash count", call.name, call.id, exc_info=True
            )
            return delivery.crashes

    def _finished(self, call: TaskCall) -> ResultMeta | None:
        """The stored final result of `call`, if it already has one."""
        try:
            meta = self.app.backend.get(call.id)
        except BackendError as exc:  # unreachable: no traceback, the breaker logs it
            logger.warning(
                "Task %s[%s]: cannot read its state to drop a duplicate (%s)",
                call.name,
                call.id,
                exc,
            )
            return None
        except Exception:  # isolation boundary: the check is an optimisation only
            logger.warning(
                "Task %s[%s]: cannot read its state to drop a duplicate",
                call.name,
                call.id,
                exc_info=True,
            )
            return None
        return meta if meta is not None and meta.is_ready else None


@dataclass(slots=True)
class Request:
    """A delivery that passed every check and is about to run."""

    delivery: Delivery
    call: TaskCall
    task: Task[Any, Any]
    context: Context
    acks_late: bool
    time_limit: float | None
    soft_time_limit: float | None
    ignore_result: bool
    acked: bool = False
    started: float = 0.0

    @property
    def id(self) -> str:
        return self.call.id

    @property
    def name(self) -> str:
        return self.call.name


def context_for(call: TaskCall, delivery: Delivery, hostname: str) -> Context:
    """The `Context` (`self.request`) a task run by worker `hostname` sees."""
    return Context(
        id=call.id,
        task=call.name,
        args=call.args,
        kwargs=call.kwargs,
        retries=call.retries,
        eta=call.eta.isoformat() if call.eta else None,
        expires=call.expires.isoformat() if call.expires else None,
        is_eager=False,
        called_directly=False,
        delivery_info=delivery.delivery_info,
        parent_id=call.parent_id,
        root_id=call.root_id or call.id,
        group=call.group,
        group_index=call.group_index,
        chord=call.chord,
        chain=call.chain,
        callbacks=call.callbacks,
        errbacks=call.errbacks,
        correlation_id=call.correlation_id,
        reply_to=call.reply_to,
        hostname=hostname,
        origin=call.origin,
        shadow=call.shadow,
        timelimit=(call.time_limit, call.soft_time_limit),
        ignore_result=call.ignore_result,
        headers=call.headers,
        stamps=call.stamps,
        stamped_headers=call.stamped_headers,
        replaced_task_nesting=call.replaced_task_nesting,
        priority=call.priority,
        queue=delivery.queue,
    )
