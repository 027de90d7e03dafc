"""The project the deployment recipes run: one app, two tasks, a periodic one.

The broker and result backend come from the environment (`CELERIAC_BROKER_URL`,
`CELERIAC_RESULT_BACKEND`), as each recipe sets them; nothing here names a server.
"""

from __future__ import annotations

from celeriac import Celeriac

app = Celeriac("proj")
app.conf.beat_schedule = {
    "heartbeat-every-minute": {"task": "proj.heartbeat", "schedule": 60.0},
}


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(ignore_result=True)
def heartbeat() -> None:
    """A periodic no-op: its runs in the worker log show beat and worker are alive."""
