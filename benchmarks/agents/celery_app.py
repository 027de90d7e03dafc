"""Stock Celery's side: the same tasks as `celeriac_app`, with Celery 5.7.

Worker: `celery -A benchmarks.agents.celery_app worker -Q $BENCH_QUEUE ...`. Settings are
Celery's defaults except the URLs, the queue and `broker_connection_retry_on_startup`
(set only to silence its deprecation warning; it changes nothing once connected).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, chord, group

from benchmarks.agents.recorder import task_finished, task_started
from benchmarks.agents.slow_server import read_slow_reply
from benchmarks.agents.timing import round_trips, timed_chord

BROKER = os.environ.get("BENCH_BROKER", "")
BACKEND = os.environ.get("BENCH_BACKEND") or None
QUEUE = os.environ.get("BENCH_QUEUE", "bench")

# S4 sync: every other task sleeps, the others read from the slow server.
SYNC_KINDS = ("sleep", "socket")

app = Celery("bench", broker=BROKER, backend=BACKEND)
app.conf.update(task_default_queue=QUEUE, broker_connection_retry_on_startup=True)


@app.task(ignore_result=True)
def noop() -> None:
    task_started()
    task_finished()


@app.task
def echo(value: int) -> int:
    return value


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def tsum(values: list[int]) -> int:
    return sum(values)


@app.task(ignore_result=True)
def sleeper(seconds: float) -> None:
    task_started()
    time.sleep(seconds)  # cooperative under -P gevent (the worker patches time.sleep)
    task_finished()


@app.task(ignore_result=True)
def sync_sleeper(seconds: float, kind: str) -> None:
    task_started()
    if kind == "socket":
        read_slow_reply()
    else:
        time.sleep(seconds)
    task_finished()


def enqueue(n: int, *, bulk: bool) -> dict[str, Any]:
    noop.delay()  # connect and declare outside the timed part
    if bulk:
        signatures = [noop.s() for _ in range(n)]
        began = time.perf_counter()
        group(signatures).apply_async()
    else:
        began = time.perf_counter()
        for _ in range(n):
            noop.delay()
    seconds = time.perf_counter() - began
    app.close()
    return {"seconds": seconds, "count": n}


def sleepers(n: int, seconds: float) -> dict[str, Any]:
    group(sleeper.s(seconds) for _ in range(n)).apply_async()
    app.close()
    return {"count": n}


def sync_sleepers(n: int, seconds: float) -> dict[str, Any]:
    group(sync_sleeper.s(seconds, SYNC_KINDS[i % 2]) for i in range(n)).apply_async()
    app.close()
    return {"count": n}


def latency(n: int, *, warmup: int, timeout: float) -> dict[str, Any]:
    result = round_trips(lambda i: echo.delay(i).get(timeout=timeout), n, warmup=warmup)
    app.close()
    return result


def fan_in(n: int, *, warmup: int, timeout: float) -> dict[str, Any]:
    result = timed_chord(
        lambda size: [add.s(i, i) for i in range(size)],
        lambda header: chord(header)(tsum.s()).get(timeout=timeout),
        n,
        warmup=warmup,
    )
    app.close()
    return result
