"""A real worker for canvas tests: its `tasks.py`, and a log of every message published.

`canvas_worker(directory)` writes `SOURCE` as `tasks.py`, imports it here, starts one
`celeriac -A tasks worker` (prefork, two children) on its SQLite file and stops it by pid
at the end. One worker serves a whole test module, so each test pays only for its canvas.

Ground truth comes from outside the system under test: tasks append JSON lines to
`events.log` (what ran, with which request fields), and an SQLite trigger copies every
row inserted into the broker's `message` table into `published`, so a test sees every
message any process sent (client or worker), headers and body, including ones a worker
already consumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tests.helpers import wait_for
from tests.integration.conftest import WorkerProcess, import_tasks, write_tasks

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SOURCE = """
import json
import os
import time
from pathlib import Path

from celeriac import Celeriac

HERE = Path(__file__).resolve().parent
app = Celeriac("tasks", broker=f"sqlite:///{HERE / 'celeriac.db'}")

# Results stay small whatever the canvas: every value is reduced modulo this prime.
MODULUS = 1_000_003


def record(event, **fields):
    line = json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **fields})
    with open(HERE / "events.log", "a") as log:
        log.write(line + "\\n")


def num(value):
    if isinstance(value, (list, tuple)):
        return sum(num(v) for v in value) % MODULUS
    return value % MODULUS


@app.task
def add(x, y=1):
    return (num(x) + num(y)) % MODULUS


@app.task
def mul(x, y=2):
    return (num(x) * num(y)) % MODULUS


@app.task
def tsum(values):
    return num(values)


@app.task
def identity(x):
    return x


@app.task
def nap(seconds, value):
    time.sleep(seconds)
    return value


@app.task
def fail(*args, **kwargs):
    raise ValueError(f"boom {list(args)!r}")


@app.task(bind=True)
def whoami(self, *args, key=None):
    request = self.request
    fields = {
        "id": request.id,
        "parent_id": request.parent_id,
        "root_id": request.root_id,
        "group": request.group,
        "group_index": request.group_index,
        "args": list(args),
    }
    record("whoami", key=key, **fields)
    return fields


@app.task
def on_error_new(request, exc, traceback):
    record(
        "errback",
        style="new",
        task_id=request.id,
        exc_type=type(exc).__name__,
        exc=str(exc),
        traceback=traceback,
    )


@app.task
def on_error_old(task_id):
    record("errback", style="old", task_id=task_id)


@app.task
def note(value, key):
    record("note", key=key, value=value)
    return value
"""

# Every row inserted into the broker's message table, copied by a trigger.
PUBLISH_LOG = """
CREATE TABLE IF NOT EXISTS published (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    headers BLOB NOT NULL,
    properties BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS log_publish AFTER INSERT ON message BEGIN
    INSERT INTO published (queue, headers, properties, body)
    VALUES (NEW.queue, NEW.headers, NEW.properties, NEW.body);
END;
"""


@dataclass(frozen=True)
class Sent:
    """One published message as read back from the log."""

    queue: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    args: list[Any]
    kwargs: dict[str, Any]
    embed: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.headers["id"])

    @property
    def task(self) -> str:
        return str(self.headers["task"])


@dataclass
class CanvasWorker:
    """The worker, its directory and the imported `tasks` module."""

    directory: Path
    tasks: Any
    process: WorkerProcess

    @property
    def database(self) -> Path:
        return self.directory / "celeriac.db"

    def sent(self) -> list[Sent]:
        """Every message published so far, oldest first."""
        with contextlib.closing(sqlite3.connect(self.database)) as connection:
            rows = connection.execute(
                "SELECT queue, headers, properties, body FROM published ORDER BY id"
            ).fetchall()
        messages = []
        for queue, headers, properties, body in rows:
            args, kwargs, embed = json.loads(body)
            messages.append(
                Sent(queue, json.loads(headers), json.loads(properties), args, kwargs, embed or {})
            )
        return messages

    def sent_for(self, task_id: str) -> Sent:
        [message] = [m for m in self.sent() if m.id == task_id]
        return message

    def queued(self, task_id: str) -> bool:
        """Whether a message of `task_id` is still in the broker (not yet acked)."""
        with contextlib.closing(sqlite3.connect(self.database)) as connection:
            rows = connection.execute("SELECT headers FROM message").fetchall()
        return any(json.loads(headers)["id"] == task_id for (headers,) in rows)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        path = self.directory / "events.log"
        if not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text().splitlines() if line]
        return [e for e in lines if kind is None or e["event"] == kind]

    def assert_alive(self) -> None:
        if self.process.process.poll() is not None:
            raise AssertionError(f"the worker died:\n{self.process.output()[-4000:]}")


@contextlib.contextmanager
def canvas_worker(directory: Path, *args: str) -> Iterator[CanvasWorker]:
    """Write the tasks, install the publish log, run one worker; stop it by pid after."""
    write_tasks(directory, SOURCE)
    tasks = import_tasks(directory)
    tasks.app.broker.declare("celery")  # creates the broker schema the trigger hangs on
    with contextlib.closing(sqlite3.connect(directory / "celeriac.db")) as connection:
        connection.executescript(PUBLISH_LOG)
    log = directory / "worker.log"
    command = [sys.executable, "-m", "celeriac", "-A", "tasks", "worker", "-l", "info", *args]
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command,
            cwd=directory,
            stdout=handle,
            stderr=handle,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    worker = WorkerProcess(process, directory, log)
    try:
        wait_for(
            lambda: "ready" in worker.output() or process.poll() is not None,
            timeout=20,
            what="worker start",
        )
        if process.poll() is not None:
            raise AssertionError(f"worker exited at start:\n{worker.output()}")
        yield CanvasWorker(directory, tasks, worker)
    finally:
        worker.stop()
        tasks.app.close()
        sys.modules.pop("tasks", None)
