"""Whether a task may wait on a result: `allow_join_result` / `denied_join_result`."""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator


# Set by `allow_join_result()`: waiting inside a task is allowed in this context.
_join_allowed: ContextVar[bool] = ContextVar("celeriac_join_allowed", default=False)


@contextlib.contextmanager
def allow_join_result() -> Iterator[None]:
    """Allow `result.get()` inside a task, for the block (Celery's `allow_join_result`).

    Waiting in a task for another task can deadlock a worker whose slots are all busy
    waiting: prefer a chain or a chord.
    """
    token = _join_allowed.set(True)
    try:
        yield
    finally:
        _join_allowed.reset(token)


@contextlib.contextmanager
def denied_join_result() -> Iterator[None]:
    """Refuse `result.get()` inside a task again, for the block (Celery's name)."""
    token = _join_allowed.set(False)
    try:
        yield
    finally:
        _join_allowed.reset(token)


def assert_will_not_block() -> None:
    from celeriac.app.context import current_request

    if _join_allowed.get():
        return
    request = current_request()
    if request is not None and not request.is_eager and not request.called_directly:
        raise RuntimeError(
            "never call result.get() within a task: it can deadlock the worker; "
            "use a chain or a chord, or wrap the call in `with allow_join_result():` "
            "(or pass disable_sync_subtasks=False) if you must"
        )
