"""Remote control and events on the embedded SQLite broker (celeriac's own channel)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests.integration.conftest import import_tasks, write_tasks

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import RunWorker

pytestmark = pytest.mark.integration

SOURCE = """
from celeriac import Celeriac

app = Celeriac("tasks", broker="sqlite:///{path}", backend="sqlite:///{path}")


@app.task(name="tasks.add")
def add(x, y):
    return x + y
"""


def celeriac(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celeriac", "-A", "tasks", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_inspect_control_and_events_work_on_sqlite(tasks_dir: Path, run_worker: RunWorker) -> None:
    write_tasks(tasks_dir, SOURCE.format(path=tasks_dir / "broker.db"))
    run_worker("-c", "1", "-n", "lite@test")
    pong = celeriac(tasks_dir, "inspect", "ping", "--json")
    assert json.loads(pong.stdout) == {"lite@test": {"ok": "pong"}}, pong.stderr
    enabled = celeriac(tasks_dir, "control", "enable_events", "--json")
    assert json.loads(enabled.stdout) == {"lite@test": {"ok": "task events enabled"}}

    tasks = import_tasks(tasks_dir)
    received: list[dict[str, object]] = []
    receiver = tasks.app.events.Receiver()
    sent = None
    for event in receiver.itercapture(timeout=30):
        received.append(event)
        if sent is None:
            # The receiver listens now: what the task does from here is seen.
            sent = tasks.add.delay(2, 2)
        if event.get("type") == "task-succeeded":
            break
    assert sent is not None
    assert sent.get(timeout=10) == 4
    mine = [e["type"] for e in received if e.get("uuid") == sent.id]
    assert mine == ["task-received", "task-started", "task-succeeded"]
    tasks.app.close()
