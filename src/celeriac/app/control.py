"""Client-side control of tasks: revocation.

`revoke` records REVOKED in the result backend (readers see it at once, as Celery 5.6+
does) and appends the ids to the backend's revocation log, which every worker process
follows (about once a second): a revoked task that has not started is not run, and with
`terminate=True` one that is running on a prefork child is stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeriac import states

if TYPE_CHECKING:
    from collections.abc import Sequence

    from celeriac.app.base import Celeriac

__all__ = ["Control"]


class Control:
    """`app.control`."""

    def __init__(self, app: Celeriac) -> None:
        self.app = app

    def revoke(self, task_id: str | Sequence[str], *, terminate: bool = False) -> None:
        """Revoke tasks: not-yet-finished ones are recorded as REVOKED and not run.

        Args:
            task_id: One id or several.
            terminate: Also stop the task if it is running (prefork: its child process
                is killed and replaced; other pools skip only tasks not yet started).
        """
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        backend = self.app.backend
        existing = backend.get_many(ids)
        for one in ids:
            meta = existing.get(one)
            if meta is not None and meta.is_ready:
                continue
            backend.store(
                backend.ready_meta(
                    one,
                    states.REVOKED,
                    {
                        "exc_type": "TaskRevokedError",
                        "exc_message": ["revoked"],
                        "exc_module": "celery.exceptions",
                    },
                )
            )
        if backend.supports_revocation:
            backend.revoke(ids, terminate=terminate)
