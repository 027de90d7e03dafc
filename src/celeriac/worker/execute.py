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
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from celeriac import states
from celeriac._time import UTC, utcnow
from celeriac.app.ratelimit import rate_interval
from celeriac.app.task import Context, pop_context, push_context
from celeriac.backends.base import ResultMeta
from celeriac.exceptions import (
    ChordError,
    ContentDisallowed,
    Ignore,
    InvalidTaskError,
    MessageTooLarge,
    NotRegistered,
    Reject,
    Retry,
    SerializationError,
    TaskRevokedError,
    WorkerLostError,
)
from celeriac.protocol.codec import TaskCall, decode_task
from celeriac.protocol.errors import decode_exception, encode_exception
from celeriac.protocol.serializers import normalize_accept
from celeriac.worker.crashpoints import crash_point

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from celeriac.app.base import Celeriac
    from celeriac.app.task import Task
    from celeriac.backends.base import ResultBackend
    from celeriac.brokers.base import Broker, Delivery
    from celeriac.canvas import Signature
    from celeriac.protocol.message import Message

__all__ = ["Executor", "Outcome", "Request", "TimeLimits"]

logger = logging.getLogger("celeriac.worker")

# Header carrying the start slot a rate-limited message already reserved.
RATE_SLOT_HEADER = "x-celeriac-rate-slot"
# A message due within this many seconds is held here instead of going back to the broker.
HOLD_SECONDS = 0.05
# Rate-limit slots and ETAs this close to now count as due (clock granularity).
DUE_TOLERANCE = 0.005
# Backoff between attempts to store a result while the backend is down.
STORE_RETRY_START = 0.1
STORE_RETRY_MAX = 5.0


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
        self.disable_rate_limits: bool = conf.worker_disable_rate_limits
        self.store_retry_time: float = conf.result_backend_max_retry_time or 0.0
        self.stats = ExecutorStats()
        self._local_slots: dict[str, float] = {}
        # A rate-limited message this close to its slot is held here, not deferred.
        self._hold_limit = broker.delay_precision + HOLD_SECONDS
        self._rate_intervals: dict[str, float | None] = {}

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

        if call.eta is not None:
            wait = (call.eta - now).total_seconds()
            if wait > HOLD_SECONDS:
                # A message that came early (a stock producer, a clock ahead of ours)
                # waits on the broker, never in this process.
                self._defer(delivery, eta=call.eta)
                return None
            if wait > 0:
                time.sleep(wait)

        interval = self._rate_interval(task)
        if interval is not None and not self._take_rate_slot(delivery, task, interval):
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
        if task.resolve_track_started() and not request.ignore_result:
            self._store(
                request,
                ResultMeta(
                    task_id=call.id,
                    status=states.STARTED,
                    result={"pid": os.getpid(), "hostname": self.hostname},
                ),
            )
        return request

    def _reject_undecodable(self, delivery: Delivery, exc: Exception) -> None:
        headers = delivery.message.headers if isinstance(delivery.message.headers, dict) else {}
        task_id = headers.get("id") if isinstance(headers.get("id"), str) else None
        name = headers.get("task") if isinstance(headers.get("task"), str) else "?"
        reason = f"{type(exc).__name__}: {exc}"
        logger.error("Task %s[%s] rejected, moved to dead letters: %s", name, task_id, reason)
        self.broker.dead_letter(delivery, reason=reason)
        self.stats.dead_lettered += 1
        if task_id:
            props = delivery.message.properties
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
        self._propagate_failure(call, context, exc, None)

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
            self._propagate_failure(call, self._context(call, delivery), exc, meta.traceback)
        self.broker.ack(delivery)

    def _revoke_expired(self, delivery: Delivery, call: TaskCall) -> None:
        logger.info("Task %s[%s] expired at %s; not run", call.name, call.id, call.expires)
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
            self._chord_part(
                call, self._context(call, delivery), states.REVOKED, encode_exception(exc)
            )
        self.broker.ack(delivery)

    def _rate_interval(self, task: Task[Any, Any]) -> float | None:
        if self.disable_rate_limits:
            return None
        cached = self._rate_intervals.get(task.name, 0.0)
        if cached == 0.0:
            limit = task.rate_limit
            if limit is None:
                limit = self.app.conf.task_default_rate_limit
            cached = rate_interval(limit)
            self._rate_intervals[task.name] = cached
        return cached

    def set_rate_limit(self, name: str, limit: Any) -> None:
        """Change a task's rate limit at run time (remote control)."""
        self._rate_intervals[name] = rate_interval(limit)

    def _take_rate_slot(self, delivery: Delivery, task: Task[Any, Any], interval: float) -> bool:
        """True to run now (on its slot); False when the message was deferred.

        Every start happens on a slot of its own, and slots are `interval` apart (the
        reservation is atomic and shared by every worker). A deferred message waits on
        the broker until a little before its slot (the broker's `delay_precision`: how
        late a delayed message may come back) and the last moment is waited here. One
        that comes back after its slot has lost it and reserves a new one, so a late
        message never starts too close to the next.
        """
        reserved = delivery.message.headers.get(RATE_SLOT_HEADER)
        if isinstance(reserved, int | float) and self._start_on_slot(reserved):
            return True
        slot = self._reserve_slot(task.name, interval)
        if self._start_on_slot(slot):
            return True
        message = delivery.message
        deferred = replace(message, headers={**message.headers, RATE_SLOT_HEADER: slot})
        release = slot - self.broker.delay_precision
        self._defer(delivery, eta=datetime.fromtimestamp(release, UTC), message=deferred)
        return False

    def _start_on_slot(self, slot: float) -> bool:
        """Wait for `slot` if it is close; False if it is too far off, or already gone."""
        wait = slot - time.time()
        if wait < -DUE_TOLERANCE or wait > self._hold_limit:
            return False
        if wait > 0:
            time.sleep(wait)
        return True

    def _reserve_slot(self, name: str, interval: float) -> float:
        # Shared by every worker: the broker's slots, else the result backend's (RabbitMQ
        # fleets), else (neither can) this process's own.
        key = f"rate:{name}"
        if self.broker.supports_rate_limit:
            return self.broker.reserve_rate_slot(key, interval=interval)
        if self.backend.supports_rate_limit:
            return self.backend.reserve_rate_slot(key, interval=interval)
        now = time.time()
        previous = self._local_slots.get(name)
        slot = now if previous is None else max(now, previous + interval)
        self._local_slots[name] = slot
        return slot

    def _defer(self, delivery: Delivery, *, eta: datetime, message: Message | None = None) -> None:
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
            if outcome.state == states.FAILURE and not self._ack_failures(task):
                self.broker.dead_letter(request.delivery, reason=f"failed: {outcome.exc!r}")
            else:
                crash_point("before_ack")
                self.broker.ack(request.delivery)
                crash_point("after_ack")
            request.acked = True

    def _ack_failures(self, task: Task[Any, Any]) -> bool:
        if task.acks_on_failure_or_timeout is not None:
            return task.acks_on_failure_or_timeout
        return bool(self.app.conf.task_acks_on_failure_or_timeout)

    def _succeeded(self, request: Request, outcome: Outcome) -> None:
        call, context = request.call, request.context
        value = outcome.value
        self.stats.succeeded += 1
        if call.callbacks:
            self._dispatch_callbacks(call, context, value)
        if call.chain:
            self._dispatch_chain(call, context, value)
        if not request.ignore_result:
            self._store(
                request, self._meta(request, states.SUCCESS, value, children=context.children)
            )
        if call.chord is not None and call.group:
            self._chord_part(call, context, states.SUCCESS, value)
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
        logger.info("Task %s[%s] retry: %s", call.name, call.id, retry)
        if not request.ignore_result:
            self._store(
                request,
                self._meta(
                    request, states.RETRY, encode_exception(cause), traceback=outcome.traceback
                ),
            )
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
        if store_errors:
            self._store(
                request,
                self._meta(
                    request, states.FAILURE, encode_exception(exc), traceback=outcome.traceback
                ),
            )
        self._propagate_failure(call, context, exc, outcome.traceback)
        self._call_hook(task.on_failure, exc, call.id, call.args, call.kwargs, outcome.traceback)

    def _propagate_failure(
        self, call: TaskCall, context: Context, exc: BaseException, trace: str | None
    ) -> None:
        """What a failure does beyond its own result: fail the rest of the chain, report
        to the chord, call the errbacks."""
        from celeriac.canvas import maybe_signature

        stored = encode_exception(exc)
        for step in call.chain or ():
            # Celery compat: the remaining steps fail with the same exception, so that
            # waiting on the chain's result raises it (and a chord waiting on the chain's
            # last step is told). Only the failed task's own errbacks are called.
            self._fail_pending(maybe_signature(step, app=self.app), stored, trace)
        if call.chord is not None and call.group:
            self._chord_part(call, context, states.FAILURE, stored)
        self._call_errbacks(call.errbacks or (), context, exc, trace, call.id)

    def _fail_pending(self, sig: Signature[Any], stored: Any, trace: str | None) -> None:
        """Record FAILURE for a signature that will never run, and for everything that
        hangs off it, reporting the parts an enclosing chord waits for (so nothing waits
        forever). Errbacks are the caller's business."""
        from celeriac.canvas import _chain, _chord, group

        if isinstance(sig, _chord):
            if sig.body is not None:
                self._fail_pending(sig.body, stored, trace)
            return
        if isinstance(sig, _chain):
            for step in sig.tasks:
                self._fail_pending(step, stored, trace)
            return
        if isinstance(sig, group):
            # Frozen members carry their group id, index and chord (see group.freeze).
            for member in sig.tasks:
                self._fail_pending(member, stored, trace)
            return
        task_id = sig.id
        if not task_id:
            return
        options = sig.options
        # With rpc:// the failure goes to the client that froze the step (its reply_to).
        self._store_quietly(
            self.backend.ready_meta(
                task_id, states.FAILURE, stored, traceback=trace, group_id=options.get("group_id")
            ),
            reply_to=options.get("reply_to"),
        )
        chord = options.get("chord")
        if chord and options.get("group_id"):
            part = TaskCall(
                name=sig.name,
                id=task_id,
                chord=dict(chord),
                group=options["group_id"],
                group_index=options.get("group_index"),
            )
            self._chord_part(part, Context(id=task_id), states.FAILURE, stored)

    def _call_errbacks(
        self,
        errbacks: Sequence[dict[str, Any]],
        context: Context,
        exc: BaseException,
        trace: str | None,
        task_id: str,
    ) -> None:
        """Call `(request, exc, traceback)` errbacks here; send the others, as one group,
        with the failed task's id (Celery's two styles)."""
        from celeriac.canvas import group, maybe_signature

        old_style: list[Signature[Any]] = []
        for errback in errbacks:
            sig = maybe_signature(errback, app=self.app)
            handler = self.app.tasks.get(sig.name)
            if handler is None or not handler.new_style_errback:
                # Celery compat: an errback this worker does not know is sent as a task.
                old_style.append(sig)
                continue
            try:
                sig(context, exc, trace)
            except Exception:  # isolation boundary: one errback must not stop the rest
                logger.exception("Errback %s of task %s failed", sig.name, task_id)
        if not old_style:
            return
        try:
            group(*old_style, app=self.app).apply_async(
                (task_id,), parent_id=task_id, root_id=context.root_id or task_id
            )
        except Exception:  # isolation boundary: a bad errback must not stop the worker
            logger.exception("Errbacks of task %s could not be sent", task_id)

    def _dispatch_callbacks(self, call: TaskCall, context: Context, value: Any) -> None:
        """Send the `link` callbacks with the result prepended (several as one group).

        A callback that cannot be sent (arguments that do not fit it, a value that does
        not serialize) is logged and recorded as failed; the task's own success stands
        and the message is not redelivered for it (it would fail the same way forever).
        Broker outages propagate: the delivery comes back and is sent again.
        """
        from celeriac.canvas import group, maybe_signature
        from celeriac.exceptions import BrokerError

        callbacks = [maybe_signature(c, app=self.app) for c in call.callbacks or ()]
        options: dict[str, Any] = {"parent_id": call.id, "root_id": context.root_id or call.id}
        if len(callbacks) > 1:
            try:
                # Celery compat: several callbacks go out as a group.
                group(*callbacks, app=self.app).apply_async((value,), **options)
                return
            except BrokerError:
                raise
            except Exception:  # isolation boundary: send them one by one to find the bad one
                pass
        for callback in callbacks:
            try:
                callback.apply_async((value,), **options)
            except BrokerError:
                raise
            except Exception as exc:  # isolation boundary: one callback that cannot be sent
                logger.exception(
                    "Task %s[%s]: callback %s cannot be sent; recorded as failed",
                    call.name,
                    call.id,
                    callback.name,
                )
                self._fail_pending(callback, encode_exception(exc), _format(exc))

    def _dispatch_chain(self, call: TaskCall, context: Context, value: Any) -> None:
        """Send the next chain step with the result prepended and the rest embedded.

        A step that cannot be sent fails itself and the rest of the chain (so nobody
        waits on them forever) and calls that step's errbacks; broker outages
        propagate.
        """
        from celeriac.canvas import maybe_signature
        from celeriac.exceptions import BrokerError

        chain = list(call.chain or ())
        step = maybe_signature(chain.pop(), app=self.app)
        options: dict[str, Any] = {"parent_id": call.id, "root_id": context.root_id or call.id}
        if chain:
            options["chain"] = chain
        if self.app.conf.task_inherit_parent_priority and call.priority is not None:
            options.setdefault("priority", call.priority)
        try:
            step.apply_async((value,), **options)
        except BrokerError:
            raise
        except Exception as exc:  # isolation boundary: a step that cannot be sent
            logger.exception(
                "Task %s[%s]: next chain step %s cannot be sent; the rest of the chain "
                "is recorded as failed",
                call.name,
                call.id,
                step.name,
            )
            stored, trace = encode_exception(exc), _format(exc)
            for pending in (step, *(maybe_signature(s, app=self.app) for s in chain)):
                self._fail_pending(pending, stored, trace)
            step_id = step.id or call.id
            self._call_errbacks(
                [dict(e) for e in step._failure_errbacks()],
                Context(id=step_id, task=step.name, root_id=context.root_id or call.id),
                exc,
                trace,
                step_id,
            )

    def _chord_part(self, call: TaskCall, context: Context, state: str, value: Any) -> None:
        """Report one header part; the worker completing the chord starts the body, or
        fails it (with its errbacks) when a part failed or the body cannot be sent."""
        from celeriac.canvas import maybe_signature

        assert call.chord is not None
        assert call.group is not None
        parts = self.backend.chord_part_return(
            call.group, index=call.group_index, task_id=call.id, status=state, result=value
        )
        if parts is None:
            return
        body = maybe_signature(call.chord, app=self.app)
        failed = next((p for p in parts if p.status in states.PROPAGATE_STATES), None)
        error: ChordError | None = None
        if failed is not None:
            cause = decode_exception(failed.result)
            error = ChordError(f"Dependency {failed.task_id} raised {cause!r}")
        else:
            try:
                body.apply_async(
                    ([p.result for p in parts],),
                    parent_id=call.id,
                    root_id=context.root_id or call.id,
                )
            except Exception as exc:  # isolation boundary: a body that cannot be sent
                error = ChordError(f"Callback error: {exc!r}")
        if error is None:
            return
        logger.error("Chord %s failed: %s", call.group, error)
        self._fail_pending(body, encode_exception(error), None)
        body_id = body.id or call.id
        self._call_errbacks(
            [dict(e) for e in body._failure_errbacks()],
            Context(id=body_id, task=body.name, group=body.options.get("group_id")),
            error,
            None,
            body_id,
        )

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

    def _store(self, request: Request, meta: ResultMeta) -> None:
        """Store a result, retrying while the backend is down (up to
        `result_backend_max_retry_time`), then giving up loudly."""
        deadline = time.monotonic() + self.store_retry_time
        delay = STORE_RETRY_START
        while True:
            try:
                crash_point("before_store")
                self.backend.store_for_request(
                    meta,
                    reply_to=request.call.reply_to,
                    correlation_id=request.call.correlation_id,
                )
                crash_point("after_store")
                return
            except Exception as exc:  # isolation boundary: backend outages
                if time.monotonic() + delay > deadline:
                    logger.error(
                        "Task %s[%s]: result %s NOT stored, backend unreachable for %.0fs: %r",
                        request.name,
                        request.id,
                        meta.status,
                        self.store_retry_time,
                        exc,
                    )
                    raise
                logger.warning(
                    "Task %s[%s]: cannot store result (%r); retrying in %.1fs",
                    request.name,
                    request.id,
                    exc,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX)

    def _store_quietly(
        self,
        meta: ResultMeta,
        *,
        reply_to: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        try:
            self.backend.store_for_request(meta, reply_to=reply_to, correlation_id=correlation_id)
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
