"""A whole worker killed at once, and its messages running elsewhere three seconds later.

Run from this directory. Starts two `celeriac worker` processes on the embedded SQLite
broker, publishes 40 one-second tasks (the victim's larger window takes most), shows
`celeriac status`, then SIGKILLs the whole process group of the victim, as an OOM-killed
container dies: no supervisor is left to hand its messages back. The surviving worker
notices its silence after `worker_lost_after` (3 s here, 30 s by default), returns what
it held, and runs every task.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(name: str, *args: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "celeriac", "-A", "tasks", "worker", "-n", name, *args]
    print(f"$ celeriac -A tasks worker -n {name} {' '.join(args)}", flush=True)
    # Its own process group, as a container's processes: killed together below.
    return subprocess.Popen(command, cwd=HERE, start_new_session=True, stderr=subprocess.DEVNULL)


def status() -> None:
    print("$ celeriac -A tasks status", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "celeriac", "-A", "tasks", "status"],
        cwd=HERE,
        capture_output=True,
        text=True,
        check=False,
    )
    print(done.stdout + done.stderr, flush=True)


def main() -> int:
    for name in ("celeriac.db", "celeriac.db-wal", "celeriac.db-shm"):
        (HERE / name).unlink(missing_ok=True)
    sys.path.insert(0, str(HERE))
    os.chdir(HERE)
    from tasks import app, slow

    survivor = worker("survivor@%h", "-P", "threads", "-c", "8", "--prefetch-multiplier", "1")
    victim = worker("victim@%h", "-P", "threads", "-c", "8")
    try:
        while len({r.worker for r in app.broker.consumers()}) < 2:
            time.sleep(0.2)
        results = [slow.delay(n) for n in range(40)]
        time.sleep(1.5)
        status()
        print(f"SIGKILL to the whole process group of the victim ({victim.pid})", flush=True)
        killed = time.monotonic()
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        values = [r.get(timeout=60) for r in results]
        took = time.monotonic() - killed
        pids = {v["pid"] for v in values}
        print(f"all {len(values)} tasks done {took:.1f}s after the kill, by pids {sorted(pids)}")
        status()
        return 0
    finally:
        for process in (survivor, victim):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
        app.close()


if __name__ == "__main__":
    sys.exit(main())
