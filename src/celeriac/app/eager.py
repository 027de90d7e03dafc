"""Run a task in this process as a worker would (`Task.apply`, `task_always_eager`).

Retries run inline (with `retries + 1`), link callbacks and errbacks are applied eagerly,
and the outcome comes back as an `EagerResult`. `task_eager_propagates` re-raises a
failure at once; `task_store_eager_result` also stores the result in the backend.
"""

from __future__ import annotations

import asyncio
import traceback as tb
import uuid
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.app.context import Context, current_request, run_in_context
from celeriac.app.task import task_entry
from celeriac.canvas.signature import signature_list
from celeriac.exceptions import Ignore, Reject, Retry
from celeriac.protocol.errors import encode_exception

if TYPE_CHECKING:
    from celeriac.app.task import Task
    from celeriac.result import EagerResult

__all__ = ["apply_eagerly"]


def _run(task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    body = task_entry(task)
    if task.is_async:
        return asyncio.run(body(*args, **kwargs))
    return body(*args, **kwargs)


def apply_eagerly(
    task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]
) -> EagerResult[Any]:
    """Run `task` here; see the module docstring."""
    from celeriac.canvas import maybe_signature
    from celeriac.result import EagerResult

    app = task.app
    task_id = options.get("task_id") or str(uuid.uuid4())
    retries = int(options.get("retries") or 0)
    parent = current_request()
    propagate = bool(options.get("throw", app.conf.task_eager_propagates))
    state = states.SUCCESS
    value: Any = None
    trace: str | None = None
    while True:
        request = Context(
            id=task_id,
            task=task.name,
            args=list(args),
            kwargs=dict(kwargs),
            retries=retries,
            is_eager=True,
            called_directly=False,
            delivery_info={"is_eager": True},
            parent_id=options.get("parent_id") or (parent.id if parent else None),
            root_id=options.get("root_id") or (parent.root_id if parent else None) or task_id,
            group=options.get("group_id"),
            group_index=options.get("group_index"),
            priority=options.get("priority"),
            headers=dict(options.get("headers") or {}),
        )
        try:
            value = run_in_context(
                task,
                request,
                lambda a=args, k=kwargs: _run(task, a, k),  # type: ignore[misc]
            )
            state = states.SUCCESS
            break
        except Retry as retry:
            eager_args = getattr(retry, "eager_args", None)
            if eager_args is not None:
                args, kwargs = eager_args
            retries += 1
            continue
        except Ignore:
            state, value = states.IGNORED, None
            break
        except Reject as reject:
            state, value = states.REJECTED, reject
            break
        except Exception as exc:
            state, value, trace = states.FAILURE, exc, tb.format_exc()
            break

    if state == states.SUCCESS:
        for callback in signature_list(options.get("link")):
            maybe_signature(callback, app=app).apply((value,))
    elif state == states.FAILURE:
        for errback in signature_list(options.get("link_error")):
            errback_sig = maybe_signature(errback, app=app)
            errback_task = app.tasks.get(errback_sig.name)
            if errback_task is not None and errback_task.new_style_errback:
                errback_sig(request, value, trace)
            else:
                errback_sig.apply((task_id,))
    if app.conf.task_store_eager_result and state in (states.SUCCESS, states.FAILURE):
        stored = encode_exception(value) if state == states.FAILURE else value
        app.backend.store(app.backend.ready_meta(task_id, state, stored, traceback=trace))
    if state == states.FAILURE and propagate:
        raise value
    return EagerResult(task_id, value, state, traceback=trace, app=app)
