"""One task's life in a worker: decode, check, run, store, dispatch, ack.

`Executor.handle(delivery)` runs a whole delivery synchronously (prefork, solo, threads);
the asyncio pool calls `prepare`, awaits the body itself, then calls `finish`. Every way
a message can be wrong ends in one log line naming the reason and the task id, the
message in the dead-letter store, and (where the message has an id) a FAILURE result so a
waiting caller learns why; the worker carries on.

Order on success follows Celery (spec §1.11): callbacks, then the next chain step, then
the SUCCESS store, then the chord part, then the ack (`acks_late`, the default). A
message is acked only after everything it caused has been published or stored, so a
worker dying at any point makes it run again rather than get lost.
"""

from __future__ import annotations

import logging
import os
import time
import traceback as tb
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from celeriac import signals, states
from celeriac._crashpoints import crash_point
from celeriac._time import utcnow
from celeriac.app.task import Context, pop_context, push_context
from celeriac.backends.base import ResultMeta
from celeriac.brokers.base import INVALID_ENVELOPE
from celeriac.exceptions import (
    ContentDisallowed,
    Ignore,
    InvalidTaskError,
    MessageTooLarge,
    NotRegistered,
    Reject,
    ResultLost,
    Retry,
    SerializationError,
    TaskRevokedError,
    WorkerLostError,
)
from celeriac.protocol.codec import TaskCall, decode_task
from celeriac.protocol.errors import decode_exception, encode_exception
from celeriac.protocol.serializers import normalize_accept
from celeriac.worker.rate_gate import RateGate
from celeriac.worker.revocations import Revocations
from celeriac.worker.spool import ResultSpool
from celeriac.worker.workflow import Workflow

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from datetime import datetime

    from celeriac.app.base import Celeriac
    from celeriac.app.task import Task
    from celeriac.backends.base import ResultBackend
    from celeriac.brokers.base import Broker, Delivery
    from celeriac.protocol.message import Message
    from celeriac.worker.consumer import AckBuffer, Holdings

__all__ = ["Executor", "Outcome", "Request", "TimeLimits"]

logger = logging.getLogger("celeriac.worker")

# A message due within this many seconds is held here instead of going back to the broker.
HOLD_SECONDS = 0.05


class TimeLimits(Protocol):
    """How a pool enforces time limits around one task run."""

    def arm(self, request: Request) -> None: ...

    def disarm(self, request: Request) -> None: ...


class NoTimeLimits:
    """For pools that cannot interrupt a running task."""

    def arm(self, request: Request) -> None:
        pass

    def disarm(self, request: Request) -> None:
        pass


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


@dataclass(slots=True)
class Outcome:
    """How a task run ended."""

    state: str
    value: Any = None
    exc: BaseException | None = None
    traceback: str | None = None
    runtime: float = 0.0


@dataclass
class ExecutorStats:
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    by_name: dict[str, int] = field(default_factory=dict)


class Executor:
    """Runs deliveries for one consumer.

    Args:
        app: The app (registry and settings).
        broker: The consumer's broker (acks, dead letters, deferrals).
        hostname: This worker's node name (`name@host`).
        limits: The pool's time-limit mechanism.
        local_rate_slots: Fallback rate limiter when the broker has none.
    """

    def __init__(
        self,
        app: Celeriac,
        broker: Broker,
        *,
        hostname: str,
        limits: TimeLimits | None = None,
        run_async: Callable[[Any], Any] | None = None,
        local_crashes: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.broker = broker
        self.hostname = hostname
        self.limits: TimeLimits = limits or NoTimeLimits()
        self.run_async = run_async
        # Deaths counted by this worker's supervisor, for when neither the broker nor
        # the result backend can count them (RabbitMQ with rpc:// results).
        self.local_crashes: Mapping[str, int] = local_crashes or {}
        conf = app.conf
        self.accept = normalize_accept(conf.accept_content)
        self.max_size: int | None = conf.task_max_message_size
        self.redelivery_limit: int = conf.task_redelivery_limit
        self.result_extended: bool = conf.result_extended
        self.stats = ExecutorStats()
        self.revocations = Revocations(app.backend)
        self.spool = ResultSpool(max_age=conf.result_backend_max_retry_time or 0.0)
        self.workflow = Workflow(app, store=self._store_strict)
        self.rates = RateGate(app, broker, defer=self._defer)
        #: When set (by a consumer), acks after a run and deferrals are sent in batches.
        self.acks: AckBuffer | None = None
        #: When set (by a consumer), deliveries waiting for their result are parked there.
        self.holdings: Holdings | None = None

    @property
    def backend(self) -> ResultBackend:
        return self.app.backend

    # -- the whole life of a delivery -------------------------------------------------

    def handle(self, delivery: Delivery) -> None:
        """Run one delivery to the end (ack, requeue or dead letter included)."""
        request = self.prepare(delivery)
        if request is None:
            return
        outcome = self.run(request)
        self.finish(request, outcome)

    # -- before running ---------------------------------------------------------------

    def prepare(self, delivery: Delivery) -> Request | None:
        """Decode and check a delivery. Returns None when it was fully dealt with here
        (dead-lettered, skipped, deferred to the broker)."""
        message = delivery.message
        now = utcnow()
        try:
            call = decode_task(message, accept=self.accept, max_size=self.max_size, now=now)
        except (ContentDisallowed, MessageTooLarge, SerializationError, InvalidTaskError) as exc:
            self._reject_undecodable(delivery, exc)
            return None

        task = self.app.tasks.get(call.name)
        if task is None:
            if signals.task_unknown.receivers:
                signals.task_unknown.send(
                    sender=self,
                    message=message,
                    exc=NotRegistered(call.name),
                    name=call.name,
                    id=call.id,
                )
            self._dead_letter_with_failure(
                delivery,
                call,
                NotRegistered(call.name),
                reason=f"unknown task {call.name}: is the module that defines it imported by "
                "the worker (-A / include)?",
            )
            return None

        try:
            task.check_arguments(call.args, call.kwargs)
        except TypeError as exc:
            self._dead_letter_with_failure(delivery, call, exc, reason=str(exc), task=task)
            return None

        crashes = self._crashes(delivery, call)
        if crashes >= self.redelivery_limit:
            error = WorkerLostError(
                f"the worker process running {call.name}[{call.id}] died "
                f"{crashes} times; it is not run again"
            )
            self._dead_letter_with_failure(
                delivery,
                call,
                error,
                reason=f"WorkerLostError: process died {crashes} times running it",
                task=task,
            )
            return None

        if delivery.redelivered and self.backend.supports_lookup:
            done = self._finished(call)
            if done is not None:
                self._drop_finished(delivery, call, done)
                return None

        if call.expires is not None and call.expires <= now:
            self._revoke_expired(delivery, call)
            return None

        if call.id in self.revocations:
            self._skip_revoked(delivery, call)
            return None

        if call.eta is not None:
            wait = (call.eta - now).total_seconds()
            if wait > HOLD_SECONDS:
                # A message that came early (a stock producer, a clock ahead of ours)
                # waits on the broker, never in this process.
                self._defer(delivery, eta=call.eta)
                return None
            if wait > 0:
                time.sleep(wait)

        if not self.rates.admit(delivery, task):
            return None

        acks_late = task.resolve_acks_late()
        limit, soft = self._time_limits(task, call)
        request = Request(
            delivery=delivery,
            call=call,
            task=task,
            context=self._context(call, delivery),
            acks_late=acks_late,
            time_limit=limit,
            soft_time_limit=soft,
            ignore_result=task.resolve_ignore_result(call.ignore_result),
        )
        if not acks_late:
            self.broker.ack(delivery)
            request.acked = True
        if signals.task_received.receivers:
            signals.task_received.send(sender=self, request=request)
        if task.resolve_track_started() and not request.ignore_result:
            started = ResultMeta(
                task_id=call.id,
                status=states.STARTED,
                result={"pid": os.getpid(), "hostname": self.hostname},
            )
            self._write(request, "STARTED", lambda: self._store_for(request, started), None)
        return request

    def _reject_undecodable(self, delivery: Delivery, exc: Exception) -> None:
        if signals.task_rejected.receivers:
            signals.task_rejected.send(sender=self, message=delivery.message, exc=exc)
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
            reason = f"{type(exc).__name__}: {exc}"
        logger.error("Task %s[%s] rejected, moved to dead letters: %s", name, task_id, reason)
        self.broker.dead_letter(delivery, reason=reason)
        self.stats.dead_lettered += 1
        if task_id:
            self._store_quietly(
                self.backend.ready_meta(task_id, states.FAILURE, encode_exception(exc)),
                reply_to=props.get("reply_to"),
                correlation_id=props.get("correlation_id"),
            )

    def _dead_letter_with_failure(
        self,
        delivery: Delivery,
        call: TaskCall,
        exc: Exception,
        *,
        reason: str,
        task: Task[Any, Any] | None = None,
    ) -> None:
        logger.error("Task %s[%s] moved to dead letters: %s", call.name, call.id, reason)
        self.broker.dead_letter(delivery, reason=reason)
        self.stats.dead_lettered += 1
        stored = encode_exception(exc)
        meta = self.backend.ready_meta(
            call.id, states.FAILURE, stored, group_id=call.group, parent_id=call.parent_id
        )
        self._store_quietly(meta, reply_to=call.reply_to, correlation_id=call.correlation_id)
        context = self._context(call, delivery)
        self.workflow.propagate_failure(call, context, exc, None)

    def _crashes(self, delivery: Delivery, call: TaskCall) -> int:
        """How often a process died running this message. Brokers that cannot count it
        (RabbitMQ) leave it to the result backend's crash ledger; read only for
        redelivered messages, so the normal path pays nothing."""
        if self.broker.supports_recover or not delivery.redelivered:
            return delivery.crashes
        if not self.backend.supports_crash_ledger:
            return max(delivery.crashes, self.local_crashes.get(call.id, 0))
        try:
            return max(delivery.crashes, self.backend.crash_count(call.id))
        except Exception:  # isolation boundary: the cap is a safety net, not a must
            logger.warning(
                "Task %s[%s]: cannot read its crash count", call.name, call.id, exc_info=True
            )
            return delivery.crashes

    def _finished(self, call: TaskCall) -> ResultMeta | None:
        """The stored final result of `call`, if it already has one."""
        try:
            meta = self.backend.get(call.id)
        except Exception:  # isolation boundary: the check is an optimisation only
            logger.warning(
                "Task %s[%s]: cannot read its state to drop a duplicate",
                call.name,
                call.id,
                exc_info=True,
            )
            return None
        return meta if meta is not None and meta.is_ready else None

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
                call, self._context(call, delivery), exc, meta.traceback
            )
        self.broker.ack(delivery)

    def _skip_revoked(self, delivery: Delivery, call: TaskCall) -> None:
        """A revoked task is not run: what follows it in the workflow fails with
        `TaskRevokedError` (chain tails, chords), and its message is acked."""
        logger.info("Task %s[%s] revoked; not run", call.name, call.id)
        self._signal_revoked(call, delivery, expired=False)
        exc = TaskRevokedError("revoked")
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
        self.workflow.propagate_failure(call, self._context(call, delivery), exc, None)
        self.broker.ack(delivery)

    def _signal_revoked(self, call: TaskCall, delivery: Delivery, *, expired: bool) -> None:
        if signals.task_revoked.receivers:
            signals.task_revoked.send(
                sender=self.app.tasks.get(call.name) or call.name,
                request=self._context(call, delivery),
                terminated=False,
                signum=None,
                expired=expired,
            )

    def _revoke_expired(self, delivery: Delivery, call: TaskCall) -> None:
        """Not run: REVOKED as in Celery, and the message kept in the dead letters with
        the reason (inspect or purge with `celeriac dlq`), so it does not vanish."""
        assert call.expires is not None
        reason = f"expired at {call.expires.isoformat()}: not run"
        logger.warning("Task %s[%s] moved to dead letters: %s", call.name, call.id, reason)
        self._signal_revoked(call, delivery, expired=True)
        exc = TaskRevokedError("expired")
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
        if call.chord is not None and call.group:
            self.workflow.chord_part(
                call, self._context(call, delivery), states.REVOKED, encode_exception(exc)
            )
        self.broker.dead_letter(delivery, reason=reason)
        self.stats.dead_lettered += 1

    def set_rate_limit(self, name: str, limit: Any) -> None:
        """Change a task's rate limit at run time (remote control)."""
        self.rates.set_rate_limit(name, limit)

    def _defer(self, delivery: Delivery, *, eta: datetime, message: Message | None = None) -> None:
        if self.acks is not None:
            # Sent with the next fetch, together with the batch's other deferrals.
            self.acks.defer(delivery, eta=eta, message=message)
            return
        crash_point("before_defer")
        self.broker.defer(delivery, eta=eta, message=message)
        crash_point("after_defer")

    def _time_limits(
        self, task: Task[Any, Any], call: TaskCall
    ) -> tuple[float | None, float | None]:
        conf = self.app.conf
        hard = call.time_limit if call.time_limit is not None else task.time_limit
        soft = call.soft_time_limit if call.soft_time_limit is not None else task.soft_time_limit
        if hard is None:
            hard = conf.task_time_limit
        if soft is None:
            soft = conf.task_soft_time_limit
        return hard, soft

    def _context(self, call: TaskCall, delivery: Delivery) -> Context:
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
            hostname=self.hostname,
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

    # -- running ----------------------------------------------------------------------

    def run(self, request: Request) -> Outcome:
        """Run the task body in this thread, under the pool's time limits."""
        task = request.task
        call = request.call
        token = push_context(task, request.context)
        request.started = time.monotonic()
        try:
            # Not counted against the message: the slot is not armed yet.
            crash_point("before_run")
            if signals.task_prerun.receivers:
                signals.task_prerun.send(
                    sender=task, task_id=call.id, task=task, args=call.args, kwargs=call.kwargs
                )
            self.limits.arm(request)
            try:
                task.before_start(call.id, call.args, call.kwargs)
                value = task.run(*call.args, **call.kwargs)
                if task.is_async:
                    if self.run_async is None:
                        raise RuntimeError("this pool cannot run async def tasks")
                    value = self.run_async(value)
            finally:
                self.limits.disarm(request)
            return Outcome(states.SUCCESS, value, runtime=time.monotonic() - request.started)
        except BaseException as exc:  # isolation boundary: the task's own failure
            return self.outcome_of(request, exc)
        finally:
            pop_context(token)

    def outcome_of(self, request: Request, exc: BaseException) -> Outcome:
        """Classify an exception raised by a task body."""
        runtime = time.monotonic() - request.started
        if isinstance(exc, Retry):
            return Outcome(states.RETRY, exc=exc, traceback=tb.format_exc(), runtime=runtime)
        if isinstance(exc, Ignore):
            return Outcome(states.IGNORED, exc=exc, runtime=runtime)
        if isinstance(exc, Reject):
            return Outcome(states.REJECTED, exc=exc, runtime=runtime)
        if not isinstance(exc, Exception):
            raise exc  # SystemExit / KeyboardInterrupt belong to the process
        return Outcome(states.FAILURE, exc=exc, traceback=_format(exc), runtime=runtime)

    # -- after running ----------------------------------------------------------------

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
                outcome.traceback,
            )
        finally:
            pop_context(token)
        if not request.acked:
            request.acked = True
            if outcome.state == states.FAILURE and not self._ack_failures(task):
                self.broker.dead_letter(request.delivery, reason=f"failed: {outcome.exc!r}")
            elif not self.spool:
                self._complete(request.delivery)
            else:
                # Its result is still on its way to the backend: ack once it is there.
                delivery = request.delivery
                if self.holdings is not None:
                    self.holdings.park(delivery)
                self.spool.submit(
                    f"Task {request.name}[{request.id}] ack",
                    _nothing,
                    lost=_nothing,
                    done=lambda: self._complete(delivery),
                )

    def _complete(self, delivery: Delivery) -> None:
        """Ack a handled delivery (batched when a consumer flushes acks)."""
        if self.acks is not None:
            self.acks.add(delivery)
            return
        crash_point("before_ack")
        self.broker.ack(delivery)
        crash_point("after_ack")
        if self.holdings is not None:
            self.holdings.release(delivery)

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
                sender=request.task, request=request.context, reason=retry, einfo=outcome.traceback
            )
        logger.info("Task %s[%s] retry: %s", call.name, call.id, retry)
        if not request.ignore_result:
            meta = self._meta(
                request, states.RETRY, encode_exception(cause), traceback=outcome.traceback
            )
            self._write(request, "RETRY", lambda: self._store_for(request, meta), None)
        self._call_hook(
            request.task.on_retry, cause, call.id, call.args, call.kwargs, outcome.traceback
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
                einfo=outcome.traceback,
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
        self._call_hook(task.on_failure, exc, call.id, call.args, call.kwargs, outcome.traceback)

    # -- storing ----------------------------------------------------------------------

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

    @staticmethod
    def _call_hook(hook: Callable[..., Any], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:  # isolation boundary: a user hook must not break the worker
            logger.exception("task hook %s failed", getattr(hook, "__name__", hook))


def _format(exc: BaseException) -> str:
    return "".join(tb.format_exception(type(exc), exc, exc.__traceback__))


def message_with_headers(message: Message, **headers: Any) -> Message:
    """A copy of `message` with extra headers."""
    return replace(message, headers={**message.headers, **headers})


def _nothing() -> None:
    pass


def _lost(call: TaskCall) -> ResultLost:
    return ResultLost(
        f"the result of {call.name}[{call.id}] could not be stored: the result backend "
        "was unreachable for longer than result_backend_max_retry_time"
    )
