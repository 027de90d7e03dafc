"""The `tasks.py` that worker integration tests run (written into each test's directory).

Tasks append JSON lines to `events.log` beside the module: the ground truth of what ran,
where and when, independent of the system under test.
"""

# The app of every test `tasks.py` (the chaos suite's too): broker, backend, queue, key
# prefix and dead-letter queue from the TEST_* variables the `broker_env` fixture sets.
APP = """
app = Celeriac(
    "tasks",
    broker=os.environ.get("TEST_BROKER_URL") or f"sqlite:///{HERE / 'celeriac.db'}",
    backend=os.environ.get("TEST_BACKEND_URL") or None,
    task_default_queue=os.environ.get("TEST_QUEUE") or "celery",
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("TEST_VISIBILITY_TIMEOUT", "300")),
        **({"global_keyprefix": os.environ["TEST_KEY_PREFIX"]}
           if os.environ.get("TEST_KEY_PREFIX") else {}),
        **({"dead_letter_queue": os.environ["TEST_DEAD_LETTER_QUEUE"]}
           if os.environ.get("TEST_DEAD_LETTER_QUEUE") else {}),
    },
    result_backend_transport_options=(
        {"global_keyprefix": os.environ["TEST_KEY_PREFIX"]}
        if os.environ.get("TEST_KEY_PREFIX") else {}
    ),
)
"""

SOURCE = (
    """
import asyncio
import json
import os
import signal
import time
from pathlib import Path

from celeriac import Celeriac
from celeriac.exceptions import SoftTimeLimitExceeded

HERE = Path(__file__).resolve().parent
"""
    + APP
    + """

def record(event, **fields):
    line = json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **fields})
    with open(HERE / "events.log", "a") as log:
        log.write(line + "\\n")


@app.task
def where():
    return {"pid": os.getpid(), "ppid": os.getppid()}


@app.task
def sleeper(seconds, key):
    record("start", key=key)
    time.sleep(seconds)
    record("end", key=key)
    return key


@app.task
def always_die():
    record("start", key="always_die")
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(soft_time_limit=0.5)
def soft():
    try:
        time.sleep(5)
    except SoftTimeLimitExceeded:
        return "soft limit caught"
    return "not interrupted"


@app.task(time_limit=1)
def hard():
    record("start", key="hard")
    time.sleep(10)
    record("end", key="hard")


@app.task(rate_limit="5/s")
def limited(n):
    now = time.time()
    record("start", key=f"limited-{n}")
    # Busy for longer than the 0.2 s between starts, so the next start needs another
    # process: the limit is shown to hold across processes, not within one.
    time.sleep(0.5)
    return now


_hog = []


@app.task
def hog(megabytes):
    _hog.append(bytearray(megabytes * 1024 * 1024))
    return os.getpid()


@app.task(bind=True, max_retries=1, default_retry_delay=3)
def retry_later(self):
    record("start", key=f"retry_later-{self.request.retries}")
    if self.request.retries == 0:
        raise self.retry()
    return "retried"


@app.task
async def nap(seconds, value):
    await asyncio.sleep(seconds)
    return value


@app.task
def pid_and_thread():
    import threading
    return [os.getpid(), threading.get_ident()]
"""
)


def events(directory: object) -> list[dict[str, object]]:
    """The events written so far by the tasks of a test directory."""
    import json
    from pathlib import Path

    path = Path(str(directory)) / "events.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
