"""One task's run in a worker: admit, run, settle.

`Executor.handle(delivery)` takes a delivery through the whole of it, top-down (prefork,
solo, threads): `admit.py` decodes and checks it and returns a verdict; a refused one is
carried out by `settle.py`; an admitted one gets its `Request` (context, time limits,
early ack), runs here under the pool's time limits, and its `Outcome` goes to
`settle.py` (store, workflow, ack). The asyncio pool calls `prepare`, awaits the body
itself, then calls `settle.finish`.
"""

from __future__ import annotations

import logging
import time
import traceback as tb
from typing import TYPE_CHECKING, Any, Protocol

from celeriac import signals, states
from celeriac._crashpoints import crash_point
from celeriac.app.context import pop_context, push_context
from celeriac.app.task import task_entry
from celeriac.exceptions import Ignore, Reject, Retry
from celeriac.worker.admit import Admission, Request, Run, context_for
from celeriac.worker.rate_gate import RateGate
from celeriac.worker.revocations import Revocations
from celeriac.worker.settle import Outcome, Settler
from celeriac.worker.workflow import format_traceback

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from celeriac.app.base import Celeriac
    from celeriac.app.task import Task
    from celeriac.brokers.base import Broker, Delivery
    from celeriac.protocol.codec import TaskCall
    from celeriac.worker.holdings import AckBuffer

__all__ = ["Executor", "NoTimeLimits", "TimeLimits"]

logger = logging.getLogger("celeriac.worker")


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


class Executor:
    """Runs deliveries for one consumer.

    Args:
        app: The app (registry and settings).
        broker: The consumer's broker (acks, dead letters, deferrals).
        hostname: This worker's node name (`name@host`).
        acks: The consumer's ack buffer (acks and deferrals go out in batches; its
            holdings keep the deliveries waiting for their result to be stored).
        limits: The pool's time-limit mechanism.
        run_async: Runs an `async def` task body to its end (None: this pool cannot).
        local_crashes: Deaths counted by this worker's supervisor, for when neither the
            broker nor the result backend can count them (RabbitMQ with rpc:// results).
    """

    def __init__(
        self,
        app: Celeriac,
        broker: Broker,
        *,
        hostname: str,
        acks: AckBuffer,
        limits: TimeLimits | None = None,
        run_async: Callable[[Any], Any] | None = None,
        local_crashes: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.broker = broker
        self.hostname = hostname
        self.limits: TimeLimits = limits or NoTimeLimits()
        self.run_async = run_async
        self.revocations = Revocations(app.backend)
        self.admission = Admission(
            app,
            self.revocations,
            broker_counts_crashes=broker.supports_recover,
            local_crashes=local_crashes,
        )
        self.holdings = acks.holdings
        self.settle = Settler(app, broker, acks, hostname=hostname, sender=self)
        self.spool = self.settle.spool
        self.stats = self.settle.stats
        self.rates = RateGate(app, broker, defer=self.settle.defer)

    # -- the whole life of a delivery -------------------------------------------------

    def handle(self, delivery: Delivery) -> None:
        """Run one delivery to the end (ack, requeue or dead letter included)."""
        request = self.prepare(delivery)
        if request is None:
            return
        outcome = self.run(request)
        self.settle.finish(request, outcome)

    # -- before running ---------------------------------------------------------------

    def prepare(self, delivery: Delivery) -> Request | None:
        """Admit a delivery and make its request. Returns None when it was fully dealt
        with here (dead-lettered, skipped, deferred to the broker)."""
        verdict = self.admission.check(delivery)
        if not isinstance(verdict, Run):
            self.settle.refuse(delivery, verdict)
            return None
        call, task = verdict.call, verdict.task
        if not self.rates.admit(delivery, task):
            return None

        acks_late = task.resolve_acks_late()
        limit, soft = self._time_limits(task, call)
        request = Request(
            delivery=delivery,
            call=call,
            task=task,
            context=context_for(call, delivery, self.hostname),
            acks_late=acks_late,
            time_limit=limit,
            soft_time_limit=soft,
            ignore_result=task.resolve_ignore_result(call.ignore_result),
        )
        # Listed as running before it can kill this process (redelivered ones only).
        self.holdings.starting(delivery)
        if not acks_late:
            self.broker.ack(delivery)
            request.acked = True
        if signals.task_received.receivers:
            signals.task_received.send(sender=self, request=request)
        if task.resolve_track_started() and not request.ignore_result:
            self.settle.store_started(request)
        return request

    def set_rate_limit(self, name: str, limit: Any) -> None:
        """Change a task's rate limit at run time (remote control)."""
        self.rates.set_rate_limit(name, limit)

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
                value = task_entry(task)(*call.args, **call.kwargs)
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
        return Outcome(states.FAILURE, exc=exc, traceback=format_traceback(exc), runtime=runtime)
