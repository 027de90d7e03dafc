"""Tasks of the worker-lost walkthrough: an embedded SQLite broker, and a short
`worker_lost_after` so that a killed worker is noticed in three seconds (default 30)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from celeriac import Celeriac

HERE = Path(__file__).resolve().parent

app = Celeriac("tasks", broker=f"sqlite:///{HERE / 'celeriac.db'}")
app.conf.worker_lost_after = 3.0


@app.task
def slow(n: int) -> dict[str, int]:
    """Takes a second; says which process ran it."""
    time.sleep(1.0)
    return {"n": n, "pid": os.getpid()}
