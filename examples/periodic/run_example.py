"""Two beat processes and a worker: the leader is killed, the follower takes over, and
each tick still runs once. Run from this directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def celeriac(*args: str) -> subprocess.Popen[bytes]:
    print("$ celeriac -A proj " + " ".join(args), flush=True)
    return subprocess.Popen([sys.executable, "-m", "celeriac", "-A", "proj", *args], cwd=HERE)


def leader_pid() -> int | None:
    sys.path.insert(0, str(HERE))
    from proj import app

    from celeriac.beat.store import open_store

    store = open_store(app)
    try:
        holder = store.leader()
    finally:
        store.close()
    return int(holder.split(":")[1]) if holder else None


def main() -> None:
    for name in ("periodic.db", "periodic.db-wal", "periodic.db-shm"):
        (HERE / name).unlink(missing_ok=True)
    processes = [
        celeriac("worker", "-P", "threads", "-c", "2", "-l", "warning"),
        celeriac("beat", "-l", "info"),
        celeriac("beat", "-l", "info"),
    ]
    try:
        time.sleep(7)
        victim = leader_pid()
        if victim is not None:
            print(f"--- killing the leading beat (pid {victim}) ---", flush=True)
            os.kill(victim, signal.SIGKILL)
        time.sleep(8)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=20)


if __name__ == "__main__":
    main()
