"""The `tasks.py` chaos tests run (written into each test's directory).

`work(ms, eta)` records start and finish in the ledger (`events.log` beside the module)
with its id, attempt, pid and time, sleeps `ms` milliseconds in between, and returns its
id. `eta` is the epoch time it was due (None without a countdown) so the checker can
count early starts. The app is configured as in the worker integration tests (`APP`).
"""

from tests.integration.worker_tasks import APP

SOURCE = (
    """
import json
import os
import time
from pathlib import Path

from celeriac import Celeriac

HERE = Path(__file__).resolve().parent
EVENTS = HERE / "events.log"
"""
    + APP
    + """

def note(event, task, eta):
    # One write with O_APPEND per record, as tests/chaos/ledger.py's append_line.
    record = {
        "event": event, "id": task.request.id, "attempt": task.request.retries,
        "pid": os.getpid(), "time": time.time(), "eta": eta,
    }
    fd = os.open(EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\\n").encode())
    finally:
        os.close(fd)


@app.task(bind=True)
def work(self, ms, eta=None):
    note("start", self, eta)
    time.sleep(ms / 1000.0)
    note("finish", self, eta)
    return self.request.id


# -- helper A: shutdown, poison -----------------------------------------------------------
RELEASE = HERE / "release"


@app.task(bind=True)
def held(self, ms, eta=None):
    # Like work, but ends early once the test creates RELEASE (drains a backlog fast).
    note("start", self, eta)
    deadline = time.time() + ms / 1000.0
    while time.time() < deadline and not RELEASE.exists():
        time.sleep(0.01)
    note("finish", self, eta)
    return self.request.id


@app.task(bind=True)
def suicide(self):
    # Kills its own process every time it runs.
    note("start", self, None)
    os.kill(os.getpid(), 9)
"""
)

# -- helper B additions (backend outage, soak) --------------------------------------------
SOURCE += """

if os.environ.get("TEST_RESULT_MAX_RETRY"):
    # A short result-store budget, and a short reconnect loop per attempt.
    app.conf.result_backend_max_retry_time = float(os.environ["TEST_RESULT_MAX_RETRY"])
    app.conf.result_backend_transport_options = {
        **app.conf.result_backend_transport_options, "connection_retries": 3,
    }


@app.task(bind=True, ignore_result=True)
def tick(self):
    # The soak's no-op: one finish record (id, time, pid), nothing else.
    record = {"event": "finish", "id": self.request.id, "pid": os.getpid(), "time": time.time()}
    fd = os.open(EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\\n").encode())
    finally:
        os.close(fd)
"""

# -- worker presence: whole process groups killed -----------------------------------------
SOURCE += """

if os.environ.get("TEST_WORKER_LOST_AFTER"):
    app.conf.worker_lost_after = float(os.environ["TEST_WORKER_LOST_AFTER"])


@app.task(bind=True)
def oom(self, ms):
    # Dies with its whole process group after `ms`, as a container OOM-killed on cgroup v2
    # does (the worker must lead its own group: run_worker(session=True)).
    note("start", self, None)
    time.sleep(ms / 1000.0)
    os.killpg(os.getpgid(0), 9)
"""
