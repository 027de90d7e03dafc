"""Periodic tasks on the embedded SQLite broker: an interval, a crontab, and an entry
added from the `on_after_configure` signal, in the Paris time zone.

    celeriac -A proj worker -P threads -c 2 -l info   # runs the tasks
    celeriac -A proj beat -l info                     # sends them (start two: one leads)
    celeriac -A proj beat --dry-run -n 3              # the next due times

`run_example.py` starts a worker and two beat processes, stops the leading beat with
SIGKILL, and shows the other one taking over.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celeriac import Celeriac
from celeriac.schedules import crontab

app = Celeriac("proj", broker="sqlite:///periodic.db")
app.conf.update(timezone="Europe/Paris", beat_lease_seconds=3.0)
app.conf.beat_schedule = {
    "heartbeat-every-2s": {"task": "proj.heartbeat", "schedule": 2.0, "args": ("tick",)},
    "report-weekday-mornings": {
        "task": "proj.report",
        "schedule": crontab(minute=30, hour=7, day_of_week="mon-fri"),
    },
}


@app.task
def heartbeat(label: str) -> str:
    line = f"{label} at {time.strftime('%H:%M:%S')} in pid {os.getpid()}"
    print(line, flush=True)
    return line


@app.task
def report() -> str:
    return "the morning report"


@app.on_after_configure.connect
def setup_periodic_tasks(sender: Celeriac, **kwargs: Any) -> None:
    sender.add_periodic_task(60.0, heartbeat.s("minute"), name="heartbeat-every-minute")
