"""`Context`, the running request (`task.request`), and the contextvar that holds it.

Threads and asyncio tasks each see their own: workers and eager runs push the request of
the call they run (`push_context`/`pop_context`, `run_in_context`), and `current_request()`
answers from anywhere in that call. A retry is built here too, from the request's own
message fields (`Context.retried`).
"""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celeriac.protocol.codec import TaskCall, signature_dicts

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextvars import Token
    from datetime import datetime

    from celeriac.app.task import Task

__all__ = [
    "Context",
    "current_request",
    "current_task",
    "pop_context",
    "push_context",
    "request_of",
    "run_in_context",
]


@dataclass(slots=True)
class Context:
    """`task.request`: what the running task knows about its own call (Celery's names)."""

    id: str | None = None
    task: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: str | None = None
    expires: str | None = None
    is_eager: bool = False
    called_directly: bool = True
    delivery_info: dict[str, Any] = field(default_factory=dict)
    parent_id: str | None = None
    root_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    chord: dict[str, Any] | None = None
    chain: list[dict[str, Any]] | None = None
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    hostname: str | None = None
    origin: str | None = None
    shadow: str | None = None
    timelimit: tuple[float | None, float | None] = (None, None)
    ignore_result: bool | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    stamps: dict[str, Any] = field(default_factory=dict)
    stamped_headers: list[str] | None = None
    replaced_task_nesting: int = 0
    priority: int | None = None
    #: celeriac: the queue the message was taken from (retries go back there).
    queue: str | None = None
    #: Results of tasks sent by this task (`as_tuple()` forms), stored as `children`.
    children: list[Any] = field(default_factory=list)

    @property
    def origin_queue(self) -> str | None:
        """The queue this request came from: the one it was taken from, else its routing
        key when it came by the default exchange (a routing key names a queue only on
        the default exchange, Celery's rule)."""
        if self.queue:
            return self.queue
        delivery = self.delivery_info or {}
        return delivery.get("routing_key") if not delivery.get("exchange") else None

    def retried(
        self, name: str, args: list[Any], kwargs: dict[str, Any], *, eta: datetime | None
    ) -> TaskCall:
        """The next try of this request: same id and workflow, `retries + 1`, `args`,
        `kwargs` and `eta`. What a producer writes afresh (origin, reprs, expiry,
        nesting) is not carried over; this request is the retry's parent, as in Celery.
        """
        task_id = self.id or str(uuid.uuid4())
        return TaskCall(
            name=name,
            id=task_id,
            args=args,
            kwargs=kwargs,
            callbacks=signature_dicts(self.callbacks),
            errbacks=signature_dicts(self.errbacks),
            chain=self.chain or None,
            chord=dict(self.chord) if self.chord else None,
            eta=eta,
            retries=self.retries + 1,
            time_limit=self.timelimit[0],
            soft_time_limit=self.timelimit[1],
            group=self.group,
            group_index=self.group_index,
            root_id=self.root_id or self.id or task_id,
            parent_id=self.parent_id or self.id,
            shadow=self.shadow,
            ignore_result=self.ignore_result,
            reply_to=self.reply_to,
            priority=self.priority,
            headers=dict(self.headers or {}),
            stamped_headers=self.stamped_headers,
            stamps=dict(self.stamps or {}),
        )


_EMPTY_CONTEXT = Context()
_current: ContextVar[tuple[Task[Any, Any], Context] | None] = ContextVar(
    "celeriac_current_task", default=None
)


def current_request() -> Context | None:
    """The request of the task running in this thread/coroutine, if any."""
    entry = _current.get()
    return entry[1] if entry is not None else None


def current_task() -> Task[Any, Any] | None:
    """The task running in this thread/coroutine, if any."""
    entry = _current.get()
    return entry[0] if entry is not None else None


def request_of(task: Task[Any, Any]) -> Context:
    """`task.request`: the running call's context when `task` is the one running, else an
    empty one."""
    entry = _current.get()
    if entry is not None and entry[0] is task:
        return entry[1]
    return _EMPTY_CONTEXT


def run_in_context(task: Task[Any, Any], context: Context, fun: Callable[[], Any]) -> Any:
    """Call `fun` with `task.request` set to `context` (used by workers and eager runs)."""
    token = _current.set((task, context))
    try:
        return fun()
    finally:
        _current.reset(token)


def push_context(
    task: Task[Any, Any], context: Context
) -> Token[tuple[Task[Any, Any], Context] | None]:
    """Make `context` the current request; returns a token for `pop_context`."""
    return _current.set((task, context))


def pop_context(token: Token[tuple[Task[Any, Any], Context] | None]) -> None:
    _current.reset(token)
