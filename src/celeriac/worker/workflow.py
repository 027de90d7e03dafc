"""What a task's outcome does to the rest of its workflow (Celery's canvas semantics).

On success: the `link` callbacks and the next chain step are sent, and a chord header
part is reported (the worker completing the header starts the body). On failure: the
rest of the chain and anything waiting on it fail with the same exception, the chord is
told, and the errbacks are called (inline when they take `(request, exc, traceback)`,
sent with the task id otherwise). `settle.py` decides when; this module decides what.
"""

from __future__ import annotations

import functools
import logging
import traceback as tb
from typing import TYPE_CHECKING, Any, Protocol

from celeriac import states
from celeriac.app.context import Context
from celeriac.exceptions import BrokerError, ChordError
from celeriac.protocol.codec import TaskCall
from celeriac.protocol.errors import decode_exception, encode_exception

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from celeriac.app.base import Celeriac
    from celeriac.backends.base import ResultBackend, ResultMeta
    from celeriac.canvas import Signature

__all__ = ["Workflow", "format_traceback"]

logger = logging.getLogger("celeriac.worker")


def format_traceback(exc: BaseException) -> str:
    """The formatted traceback of `exc`, as stored with a failure."""
    return "".join(tb.format_exception(type(exc), exc, exc.__traceback__))


#: Failures found while sending what follows a task, recorded once the task's own result
#: is stored (so whoever sees the failure of a later step also sees the earlier success).
Afterwards = list["Callable[[], None]"]


class StoreRecord(Protocol):
    def __call__(self, meta: ResultMeta, *, reply_to: str | None = None) -> None: ...


class Workflow:
    """Dispatches callbacks, chain steps, chord joins and failures for one worker.

    Args:
        app: The app (to send with, and its result backend).
        store: Stores a record; raises `BackendError` while the backend is down (the
            settler then retries the whole step from its result spool).
    """

    def __init__(self, app: Celeriac, *, store: StoreRecord) -> None:
        self.app = app
        self.store = store

    @property
    def backend(self) -> ResultBackend:
        return self.app.backend

    def propagate_failure(
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
            self.fail_pending(maybe_signature(step, app=self.app), stored, trace)
        if call.chord is not None and call.group:
            self.chord_part(call, context, states.FAILURE, stored)
        self.call_errbacks(call.errbacks or (), context, exc, trace, call.id)

    def fail_pending(self, sig: Signature[Any], stored: Any, trace: str | None) -> None:
        """Record FAILURE for a signature that will never run, and for everything that
        hangs off it, reporting the parts an enclosing chord waits for (so nothing waits
        forever). Errbacks are the caller's business."""
        from celeriac.canvas import _chain, _chord, group

        if isinstance(sig, _chord):
            if sig.body is not None:
                self.fail_pending(sig.body, stored, trace)
            return
        if isinstance(sig, _chain):
            for step in sig.tasks:
                self.fail_pending(step, stored, trace)
            return
        if isinstance(sig, group):
            # Frozen members carry their group id, index and chord (see group.freeze).
            for member in sig.tasks:
                self.fail_pending(member, stored, trace)
            return
        task_id = sig.id
        if not task_id:
            return
        options = sig.options
        # With rpc:// the failure goes to the client that froze the step (its reply_to).
        self.store(
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
            self.chord_part(part, Context(id=task_id), states.FAILURE, stored)

    def call_errbacks(
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

    def dispatch_callbacks(self, call: TaskCall, context: Context, value: Any) -> Afterwards:
        """Send the `link` callbacks with the result prepended (several as one group).

        A callback that cannot be sent (arguments that do not fit it, a value that does
        not serialize) is logged, and recording it as failed is returned for the caller
        to run after storing the task's own result; the task's success stands and the
        message is not redelivered for it (it would fail the same way forever). Broker
        outages propagate: the delivery comes back and is sent again.
        """
        from celeriac.canvas import group, maybe_signature

        callbacks = [maybe_signature(c, app=self.app) for c in call.callbacks or ()]
        options: dict[str, Any] = {"parent_id": call.id, "root_id": context.root_id or call.id}
        afterwards: Afterwards = []
        # Celery compat: several callbacks go out as a group; when that cannot be sent,
        # they are sent one by one to find the bad one.
        if len(callbacks) > 1 and _send(group(*callbacks, app=self.app), value, options) is None:
            return afterwards
        for callback in callbacks:
            exc = _send(callback, value, options)
            if exc is not None:
                logger.error(
                    "Task %s[%s]: callback %s cannot be sent; recorded as failed",
                    call.name,
                    call.id,
                    callback.name,
                    exc_info=exc,
                )
                afterwards.append(
                    functools.partial(
                        self.fail_pending, callback, encode_exception(exc), format_traceback(exc)
                    )
                )
        return afterwards

    def dispatch_chain(self, call: TaskCall, context: Context, value: Any) -> Afterwards:
        """Send the next chain step with the result prepended and the rest embedded.

        A step that cannot be sent fails itself and the rest of the chain (so nobody
        waits on them forever) and calls that step's errbacks: returned for the caller
        to run after storing the task's own result. Broker outages propagate.
        """
        from celeriac.canvas import maybe_signature

        chain = list(call.chain or ())
        step = maybe_signature(chain.pop(), app=self.app)
        options: dict[str, Any] = {"parent_id": call.id, "root_id": context.root_id or call.id}
        if chain:
            options["chain"] = chain
        if self.app.conf.task_inherit_parent_priority and call.priority is not None:
            options.setdefault("priority", call.priority)
        failure = _send(step, value, options)
        if failure is None:
            return []
        logger.error(
            "Task %s[%s]: next chain step %s cannot be sent; the rest of the chain "
            "is recorded as failed",
            call.name,
            call.id,
            step.name,
            exc_info=failure,
        )

        def fail_the_rest() -> None:
            stored, trace = encode_exception(failure), format_traceback(failure)
            for pending in (step, *(maybe_signature(s, app=self.app) for s in chain)):
                self.fail_pending(pending, stored, trace)
            step_id = step.id or call.id
            self.call_errbacks(
                [dict(e) for e in step._failure_errbacks()],
                Context(id=step_id, task=step.name, root_id=context.root_id or call.id),
                failure,
                trace,
                step_id,
            )

        return [fail_the_rest]

    def chord_part(
        self,
        call: TaskCall,
        context: Context,
        state: str,
        value: Any,
        *,
        store: ResultMeta | None = None,
    ) -> None:
        """Report one header part (after storing its result `store`, if given, in the
        same step); the worker completing the chord starts the body, or fails it (with
        its errbacks) when a part failed or the body cannot be sent."""
        from celeriac.canvas import maybe_signature

        assert call.chord is not None
        assert call.group is not None
        if store is not None:
            parts = self.backend.store_and_join(store, call.group, index=call.group_index)
        else:
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
        self.fail_pending(body, encode_exception(error), None)
        body_id = body.id or call.id
        self.call_errbacks(
            [dict(e) for e in body._failure_errbacks()],
            Context(id=body_id, task=body.name, group=body.options.get("group_id")),
            error,
            None,
            body_id,
        )


def _send(sig: Signature[Any], value: Any, options: dict[str, Any]) -> Exception | None:
    """Send `sig` with `value` prepended; the error when it cannot be sent. Broker
    outages propagate: the delivery comes back and is sent again."""
    try:
        sig.apply_async((value,), **options)
    except BrokerError:
        raise
    except Exception as exc:  # isolation boundary: a signature that cannot be sent
        return exc
    return None
