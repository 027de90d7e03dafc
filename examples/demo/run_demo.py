"""The seed walkthrough: start a worker, call tasks every way, print what comes back.

Run from this directory (`make demo` does). The worker is a real `celeriac worker`
process on the embedded SQLite broker; it is stopped with SIGTERM (a warm shutdown) at
the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def show(what: str, value: Any) -> None:
    print(f"  {what:<58} -> {value!r}", flush=True)


def start_worker() -> subprocess.Popen[bytes]:
    for name in ("celeriac.db", "celeriac.db-wal", "celeriac.db-shm"):
        (HERE / name).unlink(missing_ok=True)
    command = [sys.executable, "-m", "celeriac", "-A", "tasks", "worker", "-l", "info", "-c", "2"]
    print("$ celeriac -A tasks worker -l info -c 2", flush=True)
    return subprocess.Popen(command, cwd=HERE)


def main() -> int:
    sys.path.insert(0, str(HERE))
    os.chdir(HERE)
    from tasks import (
        add,
        divide,
        fetch,
        hopeless,
        log_error,
        multiply,
        notify,
        throttled,
        total,
    )

    from celeriac import chain, chord, group, signature

    worker = start_worker()
    try:
        print("\nWaiting for the worker...", flush=True)
        show("add.delay(4, 4).get(timeout=30)", add.delay(4, 4).get(timeout=30))

        started = time.monotonic()
        result = add.apply_async((2, 3), countdown=1)
        value = result.get(timeout=10)
        show(
            "add.apply_async((2, 3), countdown=1)",
            f"{value} after {time.monotonic() - started:.1f}s",
        )

        sent = notify.apply_async(("hello",), ignore_result=True)
        time.sleep(0.3)
        show("notify.delay('hello') with ignore_result", f"state {sent.state} (not stored)")

        starts = [throttled.delay(n) for n in range(4)]
        times = [r.get(timeout=10) for r in starts]
        gaps = [round(b - a, 2) for a, b in zip(sorted(times), sorted(times)[1:], strict=False)]
        show("4 x throttled (rate_limit='5/s'): gaps between starts", gaps)

        show("fetch.delay(url) (fails twice, retried)", fetch.delay("example.org").get(timeout=10))
        try:
            hopeless.delay().get(timeout=10)
        except Exception as exc:
            show("hopeless.delay() (max_retries=2)", f"raised {exc!r}")

        show(
            "signature('tasks.add', args=(2, 2), immutable=True)",
            signature("tasks.add", args=(2, 2), immutable=True).delay().get(timeout=10),
        )
        show(
            "chain(add.s(4, 4), multiply.s(10))()",
            chain(add.s(4, 4), multiply.s(10))().get(timeout=10),
        )
        show("group(add.s(2, 2), add.s(4, 4))()", group(add.s(2, 2), add.s(4, 4))().get(timeout=10))
        show(
            "chord([add.s(2, 2), add.s(4, 4)])(total.s())",
            chord([add.s(2, 2), add.s(4, 4)])(total.s()).get(timeout=10),
        )
        linked = add.apply_async((4, 4), link=multiply.s(2))
        linked.get(timeout=10)
        child = linked.children[0] if linked.children else None
        show(
            "add.apply_async((4, 4), link=multiply.s(2))",
            f"8, callback -> {child.get(timeout=10) if child else None}",
        )
        failing = divide.apply_async((1, 0), link_error=log_error.s())
        try:
            failing.get(timeout=10)
        except ZeroDivisionError as exc:
            show("divide.apply_async((1, 0), link_error=log_error.s())", f"raised {exc!r}")
        print("\nStopping the worker with SIGTERM (warm shutdown)...", flush=True)
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
    print(f"worker exited with code {code}", flush=True)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
