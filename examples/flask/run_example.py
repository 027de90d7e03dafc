"""The Flask recipe end to end: start a worker, post to the site, poll for the result.

Run from this directory: `python run_example.py` (the queue is `broker.db` here).
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
    for name in ("broker.db", "broker.db-wal", "broker.db-shm"):
        (HERE / name).unlink(missing_ok=True)
    print("$ celeriac -A app worker -l info", flush=True)
    worker = subprocess.Popen([sys.executable, "-m", "celeriac", "-A", "app", "worker"])
    try:
        sys.path.insert(0, str(HERE))
        from app import flask_app

        client = flask_app.test_client()
        result_id = client.post("/greet", data={"name": "Ada"}).get_json()["result_id"]
        print("POST /greet ->", result_id, flush=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            body = client.get(f"/result/{result_id}").get_json()
            if body["ready"]:
                print("GET /result ->", body["value"], flush=True)
                break
            time.sleep(0.1)
        else:
            raise SystemExit("timed out")
    finally:
        worker.send_signal(signal.SIGTERM)
        print("worker exited with code", worker.wait(timeout=60), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
