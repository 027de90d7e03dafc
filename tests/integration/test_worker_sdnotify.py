"""A worker run by systemd with `Type=notify` says READY=1 once it consumes, STOPPING=1 on
its way out (docs/deploy.md, "systemd"): the datagrams are read on a real unix socket
given to a real worker process as `$NOTIFY_SOCKET`, as systemd does."""

from __future__ import annotations

import signal
import socket
from typing import TYPE_CHECKING

import pytest

from tests.integration.conftest import write_tasks

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import RunWorker

pytestmark = pytest.mark.integration

SOURCE = """
from celeriac import Celeriac

app = Celeriac("tasks", broker="sqlite:///broker.db")


@app.task
def add(x, y):
    return x + y
"""

# A worker start took about 1 s on this 2-core machine; its warm shutdown with nothing
# running well under one. The bounds are many times that, for a loaded machine.
READY_WITHIN = 30.0
STOPPED_WITHIN = 30.0


@pytest.mark.parametrize("pool", ["prefork", "threads", "asyncio", "solo"])
def test_worker_notifies_systemd_when_ready_and_when_stopping(
    pool: str, tasks_dir: Path, run_worker: RunWorker
) -> None:
    # The SIGTERM follows READY=1 at once, as a `systemctl stop` right after the start
    # would: a warm shutdown even before the pool has installed its own handlers.
    write_tasks(tasks_dir, SOURCE)
    path = tasks_dir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(READY_WITHIN)
        worker = run_worker("-P", pool, "-c", "2", env={"NOTIFY_SOCKET": str(path)}, wait=False)
        ready = listener.recv(4096).decode()
        assert ready.splitlines()[0] == "READY=1"
        assert "ready" in worker.output()  # the worker consumes by the time it says so
        worker.signal(signal.SIGTERM)
        listener.settimeout(STOPPED_WITHIN)
        assert listener.recv(4096) == b"STOPPING=1"
        assert worker.wait(timeout=STOPPED_WITHIN) == 0
