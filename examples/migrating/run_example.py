"""Start a worker on the Celery-style project and call its tasks.

Run from this directory: `python run_example.py`. The worker consumes both queues of
`CELERY_QUEUES` (no -Q) and is stopped with SIGTERM at the end.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    for name in ("celeriac.db", "celeriac.db-wal", "celeriac.db-shm"):
        (HERE / name).unlink(missing_ok=True)
    sys.path.insert(0, str(HERE))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celeriac", "-A", "tasks", "worker", "-l", "info", "-P", "solo"],
        cwd=HERE,
    )
    try:
        from tasks import process, shout, thumbnail

        print("thumbnail ->", thumbnail.delay("cat.png").get(timeout=30), flush=True)
        print("process   ->", process.delay("dog.png").get(timeout=30), flush=True)
        print("shout     ->", shout.delay("hello").get(timeout=30), flush=True)
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
        print(f"worker exited with code {code}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
