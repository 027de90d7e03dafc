"""The tasks of the demo walkthrough (run it with `make demo`).

No broker URL: celeriac uses the embedded SQLite file `celeriac.db` in this directory as
broker and result backend, so nothing needs to be installed or started.
"""

from __future__ import annotations

import time
from typing import Any

from celeriac import Celeriac, Task

app = Celeriac("tasks")


class TemporaryError(Exception):
    """A failure worth retrying."""


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def multiply(x: int, y: int) -> int:
    return x * y


@app.task
def total(values: list[int]) -> int:
    return sum(values)


@app.task(ignore_result=True)
def notify(message: str) -> None:
    print(f"notify: {message}", flush=True)


@app.task(rate_limit="5/s")
def throttled(n: int) -> float:
    return time.time()


@app.task(bind=True, max_retries=3, default_retry_delay=0.2)
def fetch(self: Task[..., str], url: str) -> str:
    # Fails twice, then succeeds: each retry is a new message with a countdown.
    if self.request.retries < 2:
        raise self.retry(exc=TemporaryError(f"{url} not ready (try {self.request.retries})"))
    return f"content of {url} after {self.request.retries} retries"


@app.task(bind=True, max_retries=2, default_retry_delay=0.1)
def hopeless(self: Task[..., None]) -> None:
    raise self.retry(exc=TemporaryError("still down"))


@app.task
def log_error(request: Any, exc: BaseException, traceback: str | None) -> None:
    print(f"log_error: task {request.id} failed with {exc!r}", flush=True)


@app.task
def divide(x: int, y: int) -> float:
    return x / y
