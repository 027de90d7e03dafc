"""Schedules for periodic tasks: `schedule` (an interval), `crontab` and `solar`.

Pure maths with Celery's names and results: `is_due(last_run_at)` returns
`schedstate(is_due, next)` (seconds until the next check) and
`remaining_estimate(last_run_at)` the `timedelta` until the next run, as in
`celery.schedules`; the test suite compares both with stock Celery's answers, DST
transitions included. Beat needs one thing more, a deterministic instant for each run:
`next_run_after(last_run_at)` is the scheduled time of the first run after
`last_run_at`, independent of the current time, so every beat process names a tick the
same way.

Time zones: a schedule reads the app's `timezone` (or UTC with `enable_utc`, or the
system's zone without it), as Celery does; naive datetimes are taken as UTC. Nothing
here sends, sleeps or stores (that is `celeriac.beat`).
"""

import math
from datetime import timedelta
from typing import Any

from celeriac.exceptions import ImproperlyConfigured
from celeriac.schedules.base import BaseSchedule as BaseSchedule
from celeriac.schedules.base import ParseException as ParseException
from celeriac.schedules.base import Schedule as Schedule
from celeriac.schedules.base import app_timezone as app_timezone
from celeriac.schedules.base import schedstate as schedstate
from celeriac.schedules.cron import crontab as crontab
from celeriac.schedules.cron import crontab_parser as crontab_parser
from celeriac.schedules.interval import schedule as schedule
from celeriac.schedules.sun import solar as solar

__all__ = [
    "BaseSchedule",
    "ParseException",
    "Schedule",
    "app_timezone",
    "crontab",
    "crontab_parser",
    "maybe_schedule",
    "schedstate",
    "schedule",
    "solar",
]


def maybe_schedule(value: Any, relative: bool = False, app: Any = None) -> Any:
    """A schedule from seconds, a `timedelta` or a schedule object (given `app`)."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ImproperlyConfigured(f"schedule of {value!r} seconds is not usable")
        value = timedelta(seconds=value)
    if isinstance(value, timedelta):
        return schedule(value, relative, app=app)
    if isinstance(value, BaseSchedule) and app is not None:
        value.app = app
    return value
