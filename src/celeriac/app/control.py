"""Client-side control of tasks: revocation.

`revoke` records REVOKED in the result backend (readers see it at once, as Celery 5.6+
does) and appends the ids to the backend's revocation log, which every worker process
follows (about once a second): a revoked task that has not started is not run, and with
`terminate=True` one that is running on a prefork child is stopped.
"""

from __future__ import annotations

import signal as signal_module
from typing import TYPE_CHECKING

from celeriac import states
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Sequence

    from celeriac.app.base import Celeriac

__all__ = ["Control"]


def _check_signal(name: str | int | None) -> None:
    if name is None:
        return
    text = str(name).upper()
    if text in ("SIGKILL", "KILL", str(int(signal_module.SIGKILL))):
        return
    raise ImproperlyConfigured(
        f"revoke(signal={name!r}) is not supported: celeriac stops a terminated task's "
        "process with SIGKILL; pass signal='SIGKILL' or leave it out"
    )


class Control:
    """`app.control`."""

    def __init__(self, app: Celeriac) -> None:
        self.app = app

    def revoke(
        self,
        task_id: str | Sequence[str],
        *,
        terminate: bool = False,
        signal: str | int | None = None,
        wait: bool = False,
    ) -> None:
        """Revoke tasks: not-yet-finished ones are recorded as REVOKED and not run.

        Args:
            task_id: One id or several.
            terminate: Also stop the task if it is running (prefork: its child process
                is killed and replaced; other pools skip only tasks not yet started).
            signal: The signal that stops a terminated task: only SIGKILL (what
                celeriac sends), by name or number.
            wait: Celery's wait for workers' replies: not supported (refused).

        Raises:
            ImproperlyConfigured: another signal, or `wait=True`.
        """
        _check_signal(signal)
        if wait:
            raise ImproperlyConfigured(
                "revoke(wait=True) is not supported: revocations are stored in the result "
                "backend and read by workers about once a second, with no reply"
            )
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
