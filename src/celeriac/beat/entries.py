"""Schedule entries: `beat_schedule` in Celery's format, checked and made into `Entry`s.

```python
app.conf.beat_schedule = {
    "add-every-30-seconds": {
        "task": "tasks.add",
        "schedule": 30.0,                 # seconds, a timedelta, crontab(), solar()
        "args": (16, 16),
        "kwargs": {},
        "options": {"queue": "periodic"}, # any apply_async option
        "relative": False,
    },
}
```

A malformed entry is refused with its name and what to write instead; nothing is
skipped silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, final

from celeriac.exceptions import ImproperlyConfigured
from celeriac.schedules import BaseSchedule, Schedule, maybe_schedule

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac

__all__ = ["Entry", "entries_from_config", "make_entry"]

_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "relative", "name"})


@final
@dataclass(frozen=True)
class Entry:
    """One periodic task.

    Attributes:
        name: The entry's key in `beat_schedule` (unique per schedule).
        task: Name of the task to send.
        schedule: When: a `celeriac.schedules` object (or any object with Celery's
            `is_due`/`remaining_estimate`).
        args: Positional arguments of each run.
        kwargs: Keyword arguments of each run.
        options: `apply_async` options (queue, priority, expires, ...).
    """

    name: str
    task: str
    schedule: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """A digest of the definition: when it changes, the stored entry is updated."""
        described = [
            self.task,
            type(self.schedule).__name__,
            repr(self.schedule),
            bool(getattr(self.schedule, "relative", False)),
            list(self.args),
            self.kwargs,
            self.options,
        ]
        text = json.dumps(described, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def make_entry(name: str, definition: Mapping[str, Any], app: Celeriac) -> Entry:
    """Check one `beat_schedule` item and build its `Entry`.

    Raises:
        ImproperlyConfigured: a key is unknown or missing, or a value is unusable.
    """
    where = f"beat_schedule[{name!r}]"
    if not isinstance(definition, Mapping):
        raise ImproperlyConfigured(f"{where} must be a dict with 'task' and 'schedule'")
    unknown = sorted(set(definition) - _KEYS)
    if unknown:
        raise ImproperlyConfigured(
            f"{where} has unknown key(s) {', '.join(map(repr, unknown))}: an entry takes "
            "task, schedule, args, kwargs, options and relative"
        )
    task = definition.get("task")
    if not isinstance(task, str) or not task:
        raise ImproperlyConfigured(f"{where} needs 'task': the task's name, e.g. 'tasks.add'")
    if definition.get("schedule") is None:
        raise ImproperlyConfigured(
            f"{where} needs 'schedule': seconds, a timedelta, crontab(...) or solar(...)"
        )
    schedule = _schedule(where, definition["schedule"], definition.get("relative", False), app)
    args = definition.get("args") or ()
    if isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise ImproperlyConfigured(f"{where}: 'args' must be a list or tuple, got {args!r}")
    kwargs = definition.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ImproperlyConfigured(f"{where}: 'kwargs' must be a dict, got {kwargs!r}")
    options = definition.get("options") or {}
    if not isinstance(options, Mapping):
        raise ImproperlyConfigured(f"{where}: 'options' must be a dict, got {options!r}")
    if "task_id" in options:
        raise ImproperlyConfigured(
            f"{where}: 'options' must not set task_id: beat derives each run's id from the "
            "entry and its scheduled time (so a re-send after a crash keeps the same id)"
        )
    return Entry(name, task, schedule, tuple(args), dict(kwargs), dict(options))


def _schedule(where: str, value: Any, relative: Any, app: Celeriac) -> Any:
    if type(value).__module__.startswith("celery."):
        raise ImproperlyConfigured(
            f"{where}: {value!r} is a Celery schedule object; import it from "
            "celeriac.schedules instead (same names and arguments)"
        )
    if isinstance(value, bool) or not isinstance(
        value, int | float | timedelta | BaseSchedule | Schedule
    ):
        raise ImproperlyConfigured(
            f"{where}: 'schedule' {value!r} is not a schedule: write seconds, a timedelta, "
            "crontab(...) or solar(...)"
        )
    try:
        made = maybe_schedule(value, bool(relative), app=app)
    except ImproperlyConfigured as exc:
        raise ImproperlyConfigured(f"{where}: {exc}") from exc
    if isinstance(made, BaseSchedule) and getattr(made, "seconds", 1) <= 0:
        raise ImproperlyConfigured(f"{where}: an interval must be longer than 0 seconds")
    return made


def entries_from_config(app: Celeriac) -> dict[str, Entry]:
    """Every entry of `app.conf.beat_schedule` (which `add_periodic_task` fills too)."""
    return {
        str(name): make_entry(str(name), definition, app)
        for name, definition in app.conf.beat_schedule.items()
    }
