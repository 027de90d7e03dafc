"""`ExceptionInfo`: what task hooks and signals get as `einfo` (Celery's, from billiard).

`on_failure(exc, task_id, args, kwargs, einfo)`, `on_retry`, `after_return` and the
`task_failure`/`task_retry` signals receive one: `einfo.exception`, `einfo.type`,
`einfo.tb` (the traceback object), `einfo.traceback` (the formatted text, also what
`str(einfo)` gives), `einfo.exc_info`.
"""

from __future__ import annotations

import sys
import traceback as tb
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["ExceptionInfo"]


class ExceptionInfo:
    """An exception with its traceback, kept to be read later.

    Args:
        exc_info: `(type, exception, traceback)`; default: the exception being handled.
        internal: Celery compat: True for failures of the worker, not the task.
        traceback: The formatted traceback, when already made (else formatted here).
    """

    def __init__(
        self,
        exc_info: tuple[type[BaseException], BaseException, TracebackType | None] | None = None,
        internal: bool = False,
        *,
        traceback: str | None = None,
    ) -> None:
        if exc_info is None:
            current = sys.exc_info()
            if current[1] is None:
                raise ValueError("ExceptionInfo() outside an except block needs exc_info")
            exc_info = (type(current[1]), current[1], current[2])
        self.type, self.exception, self.tb = exc_info
        self.internal = internal
        self.traceback = (
            traceback
            if traceback is not None
            else "".join(tb.format_exception(self.type, self.exception, self.tb))
        )

    @classmethod
    def from_exception(cls, exc: BaseException, *, traceback: str | None = None) -> ExceptionInfo:
        return cls((type(exc), exc, exc.__traceback__), traceback=traceback)

    @property
    def exc_info(self) -> tuple[type[BaseException], BaseException, TracebackType | None]:
        return self.type, self.exception, self.tb

    def __str__(self) -> str:
        return self.traceback

    def __repr__(self) -> str:
        return f"<ExceptionInfo: {self.exception!r}>"
