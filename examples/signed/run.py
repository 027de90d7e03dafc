"""Make keys, start a worker, send a signed task and an unsigned one, show what happened.

Run from this directory: `python run.py` (needs `pip install "celeriac[security]"`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    os.chdir(HERE)
    sys.path.insert(0, str(HERE))
    for name in ("signed.db", "signed.db-wal", "signed.db-shm"):
        (HERE / name).unlink(missing_ok=True)
    from make_keys import make_keys

    make_keys(HERE / "keys")
    from tasks import add, app

    from celeriac.protocol.codec import TaskCall, encode_task

    command = [sys.executable, "-m", "celeriac", "-A", "tasks", "worker", "-P", "solo"]
    worker = subprocess.Popen(command, cwd=HERE)
    try:
        print("signed:   add.delay(2, 3).get() ->", add.delay(2, 3).get(timeout=30), flush=True)
        # What an intruder with broker access would send: a plain JSON message.
        unsigned = encode_task(TaskCall(name="tasks.add", id="intruder-1", args=[40, 2]))
        app.broker.publish(unsigned, queue="celery")
        deadline = time.monotonic() + 30
        while not app.broker.list_dead_letters() and time.monotonic() < deadline:
            time.sleep(0.1)
        for letter in app.broker.list_dead_letters():
            print(f"unsigned: {letter.message.task_id} dead-lettered: {letter.reason}", flush=True)
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
        app.close()
    print("worker exited with code", code, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
