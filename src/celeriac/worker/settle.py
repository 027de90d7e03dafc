"""Settlement: what a delivery leaves behind once it ran, or was refused.

`Settler.finish(request, outcome)` stores the result, drives the workflow and acks;
`Settler.refuse(delivery, verdict)` carries out an admission verdict other than `Run`
(dead letter, deferral, drop). Every way a message can be wrong ends in one log line
naming the reason and the task id, the message in the dead-letter store, and (where the
message has an id) a FAILURE result so a waiting caller learns why; the worker carries on.

Order on success follows Celery (spec §1.11): callbacks, then the next chain step, then
the SUCCESS store, then the chord part, then the ack (`acks_late`, the default). A
message is acked only after everything it caused has been published or stored, so a
worker dying at any point makes it run again rather than get lost. Backend writes go
through the result spool, which holds them (and the ack) while the backend is down.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from celeriac import signals, states
from celeriac._crashpoints import crash_point
from celeriac.app.context import pop_context, push_context
from celeriac.backends.base import ResultMeta
from celeriac.brokers.base import INVALID_ENVELOPE
from celeriac.einfo import ExceptionInfo
from celeriac.exceptions import (
    NotRegistered,
    Reject,
    ResultLost,
    Retry,
    SerializationError,
    TaskRevokedError,
)
from celeriac.protocol.errors import decode_exception, encode_exception
from celeriac.worker.admit import (
    DeadLetter,
    Defer,
    Expired,
    Finished,
    Revoked,
    Undecodable,
    context_for,
    describe_error,
)
from celeriac.worker.spool import ResultSpool
from celeriac.worker.workflow import Workflow

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from celeriac.app.base import Celeriac
    from celeriac.app.task import Task
    from celeriac.backends.base import ResultBackend
    from celeriac.brokers.base import Broker, Delivery
    from celeriac.protocol.codec import TaskCall
    from celeriac.protocol.message import Message
    from celeriac.worker.admit import Refusal, Request
    from celeriac.worker.holdings import AckBuffer

__all__ = ["ExecutorStats", "Outcome", "Settler"]

logger = logging.getLogger("celeriac.worker")


@dataclass(slots=True)
class Outcome:
    """How a task run ended."""

    state: str
    value: Any = None
    exc: BaseException | None = None
    traceback: str | None = None
    runtime: float = 0.0

    def einfo(self, exc: BaseException | None = None) -> ExceptionInfo | None:
        """The `einfo` hooks and signals get (Celery's `ExceptionInfo`), for `exc` (default
        the outcome's exception); None on success."""
        exc = exc if exc is not None else self.exc
        if exc is None:
            return None
        return ExceptionInfo.from_exception(exc, traceback=self.traceback)


@dataclass
class ExecutorStats:
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    by_name: dict[str, int] = field(default_factory=dict)


class Settler:
    """Stores, dispatches and acks for one consumer.

    Args:
        app: The app (settings and result backend).
        broker: The consumer's broker (acks, dead letters, deferrals).
        acks: The consumer's ack buffer: acks after a run and deferrals go out in
            batches through it; deliveries waiting for their result to be stored are
            parked in its holdings.
        hostname: This worker's node name (`name@host`).
        sender: The `sender` of the signals sent here (the executor).
    """

    def __init__(
        self, app: Celeriac, broker: Broker, acks: AckBuffer, *, hostname: str, sender: object
    ) -> None:
        self.app = app
        self.broker = broker
        self.acks = acks
        self.holdings = acks.holdings
        self.hostname = hostname
        self.sender = sender
        conf = app.conf
        self.result_extended: bool = conf.result_extended
        self.stats = ExecutorStats()
        self.spool = ResultSpool(max_age=conf.result_backend_max_retry_time or 0.0)
        self.workflow = Workflow(app, store=self._store_strict)

    @property
    def backend(self) -> ResultBackend:
        return self.app.backend

    # -- a run that ended ---------------------------------------------------------------

    def finish(self, request: Request, outcome: Outcome) -> None:
        """Store, dispatch and ack according to the outcome."""
        task = request.task
        call = request.call
        self.stats.processed += 1
        self.stats.by_name[call.name] = self.stats.by_name.get(call.name, 0) + 1
        token = push_context(task, request.context)
        try:
            if outcome.state == states.SUCCESS:
                self._succeeded(request, outcome)
            elif outcome.state == states.RETRY:
                self._retried(request, outcome)
            elif outcome.state == states.REJECTED:
                self._rejected(request, outcome)
                return
            elif outcome.state == states.IGNORED:
                logger.info("Task %s[%s] ignored", call.name, call.id)
            else:
                self._failed(request, outcome)
            if signals.task_postrun.receivers:
                signals.task_postrun.send(
                    sender=task,
                    task_id=call.id,
                    task=task,
                    args=call.args,
                    kwargs=call.kwargs,
                    retval=outcome.value if outcome.exc is None else outcome.exc,
                    state=outcome.state,
                )
            self._call_hook(
                task.after_return,
                outcome.state,
                outcome.value if outcome.exc is None else outcome.exc,
                call.id,
                call.args,
                call.kwargs,
                outcome.einfo(),
            )
        finally:
            pop_context(token)
        if not request.acked:
            request.acked = True
            if outcome.state == states.FAILURE and not self._ack_failures(task):
                self.broker.dead_letter(request.delivery, reason=f"failed: {outcome.exc!r}")
            elif not self.spool:
                self.acks.add(request.delivery)
            else:
                # Its result is still on its way to the backend: ack once it is there.
                delivery = request.delivery
                self.holdings.park(delivery)
                self.spool.submit(
                    f"Task {request.name}[{request.id}] ack",
                    _nothing,
                    lost=_nothing,
                    done=lambda: self.acks.add(delivery),
                )

    def _ack_failures(self, task: Task[Any, Any]) -> bool:
        if task.acks_on_failure_or_timeout is not None:
            return task.acks_on_failure_or_timeout
        return bool(self.app.conf.task_acks_on_failure_or_timeout)

    def _succeeded(self, request: Request, outcome: Outcome) -> None:
        call, context = request.call, request.context
        value = outcome.value
        self.stats.succeeded += 1
        if signals.task_success.receivers:
            signals.task_success.send(sender=request.task, result=value)
        # Sent before the result is stored (Celery's order: the stored record lists them
        # as children); failures to send them are recorded after it.
        afterwards = []
        if call.callbacks:
            afterwards += self.workflow.dispatch_callbacks(call, context, value)
        if call.chain:
            afterwards += self.workflow.dispatch_chain(call, context, value)
        meta = (
            None
            if request.ignore_result
            else self._meta(request, states.SUCCESS, value, children=context.children)
        )
        in_chord = call.chord is not None and bool(call.group)

        def write() -> None:
            joined = (
                in_chord
                and meta is not None
                and self.backend.joins_with_store
                and self._store_and_join(request, meta)
            )
            if joined:
                return
            if meta is not None:
                self._store_for(request, meta)
            if in_chord:
                self.workflow.chord_part(call, context, states.SUCCESS, value)

        def lost() -> None:
            error = encode_exception(_lost(call))
            self._store_for(request, self._meta(request, states.FAILURE, error))
            if in_chord:
                self.workflow.chord_part(call, context, states.FAILURE, error)

        if meta is not None or in_chord:
            self._write(request, "SUCCESS", write, lost)
        for record_failure in afterwards:
            record_failure()
        logger.info(
            "Task %s[%s] succeeded in %.3fs: %.200r", call.name, call.id, outcome.runtime, value
        )
        self._call_hook(request.task.on_success, value, call.id, call.args, call.kwargs)

    def _retried(self, request: Request, outcome: Outcome) -> None:
        call = request.call
        retry = outcome.exc
        assert isinstance(retry, Retry)
        self.stats.retried += 1
        cause = retry.exc if retry.exc is not None else retry
        if signals.task_retry.receivers:
            signals.task_retry.send(
                sender=request.task,
                request=request.context,
                reason=retry,
                einfo=outcome.einfo(cause),
            )
        logger.info("Task %s[%s] retry: %s", call.name, call.id, retry)
        if not request.ignore_result:
            meta = self._meta(
                request, states.RETRY, encode_exception(cause), traceback=outcome.traceback
            )
            self._write(request, "RETRY", lambda: self._store_for(request, meta), None)
        self._call_hook(
            request.task.on_retry, cause, call.id, call.args, call.kwargs, outcome.einfo(cause)
        )

    def _rejected(self, request: Request, outcome: Outcome) -> None:
        reject = outcome.exc
        assert isinstance(reject, Reject)
        call = request.call
        if request.acked:
            logger.warning(
                "Task %s[%s] rejected after an early ack: nothing to requeue", call.name, call.id
            )
            return
        request.acked = True
        if reject.requeue:
            logger.info("Task %s[%s] rejected and requeued: %s", call.name, call.id, reject.reason)
            self.broker.reject(request.delivery, requeue=True)
        else:
            logger.info("Task %s[%s] rejected: %s", call.name, call.id, reject.reason)
            self.broker.dead_letter(
                request.delivery, reason=f"rejected by the task: {reject.reason}"
            )
            self.stats.dead_lettered += 1

    def _failed(self, request: Request, outcome: Outcome) -> None:
        call, context, task = request.call, request.context, request.task
        exc = outcome.exc
        assert exc is not None
        self.stats.failed += 1
        if signals.task_failure.receivers:
            signals.task_failure.send(
                sender=task,
                task_id=call.id,
                exception=exc,
                args=call.args,
                kwargs=call.kwargs,
                traceback=outcome.traceback,
                einfo=outcome.einfo(),
            )
        expected = bool(task.throws) and isinstance(exc, task.throws)
        if expected:
            logger.info("Task %s[%s] raised expected: %r", call.name, call.id, exc)
        else:
            logger.error(
                "Task %s[%s] raised unexpected: %r\n%s", call.name, call.id, exc, outcome.traceback
            )
        store_errors = not request.ignore_result or bool(
            task.store_errors_even_if_ignored
            if task.store_errors_even_if_ignored is not None
            else self.app.conf.task_store_errors_even_if_ignored
        )
        meta = (
            self._meta(request, states.FAILURE, encode_exception(exc), traceback=outcome.traceback)
            if store_errors
            else None
        )

        def write() -> None:
            if meta is not None:
                self._store_for(request, meta)
            self.workflow.propagate_failure(call, context, exc, outcome.traceback)

        self._write(request, "FAILURE", write, None)
        self._call_hook(task.on_failure, exc, call.id, call.args, call.kwargs, outcome.einfo())

    @staticmethod
    def _call_hook(hook: Callable[..., Any], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:  # isolation boundary: a user hook must not break the worker
            logger.exception("task hook %s failed", getattr(hook, "__name__", hook))

    # -- a delivery that does not run -----------------------------------------------------

    def refuse(self, delivery: Delivery, verdict: Refusal) -> None:
        """Carry out an admission verdict other than `Run`."""
        match verdict:
            case Defer():
                self.defer(delivery, eta=verdict.eta)
            case Undecodable():
                self._reject_undecodable(delivery, verdict.exc)
            case DeadLetter():
                self._dead_letter_with_failure(delivery, verdict)
            case Expired():
                self._revoke_expired(delivery, verdict.call)
            case Revoked():
                self._skip_revoked(delivery, verdict.call)
            case Finished():
                self._drop_finished(delivery, verdict.call, verdict.meta)

    def defer(self, delivery: Delivery, *, eta: datetime, message: Message | None = None) -> None:
        """Hand `delivery` back to wait for `eta` (sent with the next fetch, together with
        the batch's other deferrals)."""
        self.acks.defer(delivery, eta=eta, message=message)

    def _reject_undecodable(self, delivery: Delivery, exc: Exception) -> None:
        if signals.task_rejected.receivers:
            signals.task_rejected.send(sender=self.sender, message=delivery.message, exc=exc)
        message = delivery.message
        headers = message.headers if isinstance(message.headers, dict) else {}
        props = message.properties if isinstance(message.properties, dict) else {}
        task_id = headers.get("id") if isinstance(headers.get("id"), str) else None
        if task_id is None and isinstance(props.get("correlation_id"), str):
            # Celery compat: the correlation id of a task message is its task id.
            task_id = props["correlation_id"]
        name = headers.get("task") if isinstance(headers.get("task"), str) else "?"
        if message.content_type == INVALID_ENVELOPE:
            reason = (
                "invalid envelope: the broker could not read this message (not JSON, "
                "bad base64 or a corrupt row)"
            )
        else:
            reason = describe_error(exc)
        logger.error("Task %s[%s] rejected, moved to dead letters: %s", name, task_id, reason)
        self.broker.dead_letter(delivery, reason=reason)
        self.stats.dead_lettered += 1
        if task_id:
            self._store_quietly(
                self.backend.ready_meta(task_id, states.FAILURE, encode_exception(exc)),
                reply_to=props.get("reply_to"),
                correlation_id=props.get("correlation_id"),
            )

    def _dead_letter_with_failure(self, delivery: Delivery, verdict: DeadLetter) -> None:
        call, exc, reason = verdict.call, verdict.exc, verdict.reason
        if isinstance(exc, NotRegistered) and signals.task_unknown.receivers:
            signals.task_unknown.send(
                sender=self.sender,
                message=delivery.message,
                exc=exc,
                name=call.name,
                id=call.id,
            )
        logger.error("Task %s[%s] moved to dead letters: %s", call.name, call.id, reason)
        self.broker.dead_letter(delivery, reason=reason)
        self.stats.dead_lettered += 1
        stored = encode_exception(exc)
        meta = self.backend.ready_meta(
            call.id, states.FAILURE, stored, group_id=call.group, parent_id=call.parent_id
        )
        self._store_quietly(meta, reply_to=call.reply_to, correlation_id=call.correlation_id)
        context = context_for(call, delivery, self.hostname)
        self.workflow.propagate_failure(call, context, exc, None)

    def _drop_finished(self, delivery: Delivery, call: TaskCall, meta: ResultMeta) -> None:
        """A redelivered copy of a finished task: do not run it again. A failure recorded
        by someone else (the supervisor, at a hard time limit) is passed on to the rest of
        the workflow here, as the run that failed could not do it."""
        logger.info(
            "Task %s[%s] already finished (%s); dropping a redelivered copy",
            call.name,
            call.id,
            meta.status,
        )
        if meta.status in states.PROPAGATE_STATES:
            exc = decode_exception(meta.result)
            self.workflow.propagate_failure(
                call, context_for(call, delivery, self.hostname), exc, meta.traceback
            )
        self.broker.ack(delivery)

    def _skip_revoked(self, delivery: Delivery, call: TaskCall) -> None:
        """A revoked task is not run: what follows it in the workflow fails with
        `TaskRevokedError` (chain tails, chords), and its message is acked."""
        logger.info("Task %s[%s] revoked; not run", call.name, call.id)
        exc = self._revoked(call, delivery, "revoked", expired=False)
        self.workflow.propagate_failure(call, context_for(call, delivery, self.hostname), exc, None)
        self.broker.ack(delivery)

    def _revoke_expired(self, delivery: Delivery, call: TaskCall) -> None:
        """Not run: REVOKED as in Celery, and the message kept in the dead letters with
        the reason (inspect or purge with `celeriac dlq`), so it does not vanish."""
        assert call.expires is not None
        reason = f"expired at {call.expires.isoformat()}: not run"
        logger.warning("Task %s[%s] moved to dead letters: %s", call.name, call.id, reason)
        exc = self._revoked(call, delivery, "expired", expired=True)
        if call.chord is not None and call.group:
            self.workflow.chord_part(
                call,
                context_for(call, delivery, self.hostname),
                states.REVOKED,
                encode_exception(exc),
            )
        self.broker.dead_letter(delivery, reason=reason)
        self.stats.dead_lettered += 1

    def _revoked(
        self, call: TaskCall, delivery: Delivery, why: str, *, expired: bool
    ) -> TaskRevokedError:
        """Signal that `call` is revoked and store REVOKED for it; return the error."""
        if signals.task_revoked.receivers:
            signals.task_revoked.send(
                sender=self.app.tasks.get(call.name) or call.name,
                request=context_for(call, delivery, self.hostname),
                terminated=False,
                signum=None,
                expired=expired,
            )
        exc = TaskRevokedError(why)
        self._store_quietly(
            self.backend.ready_meta(
                call.id,
                states.REVOKED,
                encode_exception(exc),
                group_id=call.group,
                parent_id=call.parent_id,
            ),
            reply_to=call.reply_to,
            correlation_id=call.correlation_id,
        )
        return exc

    # -- storing ----------------------------------------------------------------------

    def store_started(self, request: Request) -> None:
        """Record STARTED for `request` (with this process's pid and the hostname)."""
        started = ResultMeta(
            task_id=request.id,
            status=states.STARTED,
            result={"pid": os.getpid(), "hostname": self.hostname},
        )
        self._write(request, "STARTED", lambda: self._store_for(request, started), None)

    def _meta(
        self,
        request: Request,
        state: str,
        value: Any,
        *,
        traceback: str | None = None,
        children: list[Any] | None = None,
    ) -> ResultMeta:
        call = request.call
        meta = self.backend.ready_meta(
            call.id,
            state,
            value,
            traceback=traceback,
            children=children,
            group_id=call.group,
            parent_id=call.parent_id,
        )
        if self.result_extended:
            meta = replace(
                meta,
                name=call.name,
                args=call.args,
                kwargs=call.kwargs,
                worker=self.hostname,
                retries=call.retries,
                queue=request.delivery.routing_key or request.delivery.queue,
            )
        return meta

    def _write(
        self,
        request: Request,
        what: str,
        write: Callable[[], None],
        lost: Callable[[], None] | None,
    ) -> None:
        """Run backend writes now, or spool them while the backend is down."""
        self.spool.submit(
            f"Task {request.name}[{request.id}] {what}", write, lost=lost or write, done=_nothing
        )

    def _store_for(self, request: Request, meta: ResultMeta) -> None:
        """Store `meta` for `request` (to its caller's queue with `rpc://`)."""
        call = request.call
        crash_point("before_store")
        try:
            self.backend.store_for_request(
                meta, reply_to=call.reply_to, correlation_id=call.correlation_id
            )
        except SerializationError as exc:
            # A value the result serializer cannot carry: store why instead.
            logger.error("Task %s[%s]: result cannot be serialized: %s", call.name, call.id, exc)
            failure = replace(
                meta, status=states.FAILURE, result=encode_exception(exc), traceback=None
            )
            self.backend.store_for_request(
                failure, reply_to=call.reply_to, correlation_id=call.correlation_id
            )
        crash_point("after_store")

    def _store_and_join(self, request: Request, meta: ResultMeta) -> bool:
        """Store a chord header part's result and join its chord in one step; False
        (nothing written) when the result cannot be serialized, so the caller takes the
        separate path, which stores why instead."""
        crash_point("before_store")
        try:
            self.workflow.chord_part(
                request.call, request.context, meta.status, meta.result, store=meta
            )
        except SerializationError:
            return False
        crash_point("after_store")
        return True

    def _store_strict(self, meta: ResultMeta, *, reply_to: str | None = None) -> None:
        """Store a record for the workflow (raises while the backend is down)."""
        self.backend.store_for_request(meta, reply_to=reply_to, correlation_id=None)

    def _store_quietly(
        self,
        meta: ResultMeta,
        *,
        reply_to: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Store a record off the main path (dead letters, revocations): spooled while
        the backend is down, never raising."""

        def write() -> None:
            self.backend.store_for_request(meta, reply_to=reply_to, correlation_id=correlation_id)

        try:
            self.spool.submit(
                f"Task {meta.task_id} {meta.status}", write, lost=write, done=_nothing
            )
        except Exception:  # isolation boundary: best effort on the error paths
            logger.warning("cannot store %s for task %s", meta.status, meta.task_id, exc_info=True)


def _nothing() -> None:
    pass


def _lost(call: TaskCall) -> ResultLost:
    return ResultLost(
        f"the result of {call.name}[{call.id}] could not be stored: the result backend "
        "was unreachable for longer than result_backend_max_retry_time"
    )
