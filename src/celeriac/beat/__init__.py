"""Periodic tasks: the beat scheduler, its state store and its leader lease.

`celeriac -A proj beat` (or `worker -B`) runs a `Scheduler`; any number may run at
once, one leads. See docs/periodic-tasks.md.
"""

from __future__ import annotations

from celeriac.beat.entries import Entry
from celeriac.beat.scheduler import Scheduler
from celeriac.beat.store import ScheduleStore, open_store

__all__ = ["Entry", "ScheduleStore", "Scheduler", "open_store"]
