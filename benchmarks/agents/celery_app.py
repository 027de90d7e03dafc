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

BROKER = os.environ.get("BENCH_BROKER", "")
BACKEND = os.environ.get("BENCH_BACKEND") or None
QUEUE = os.environ.get("BENCH_QUEUE", "bench")

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


def latency(n: int, *, warmup: int, timeout: float) -> dict[str, Any]:
    for i in range(warmup):
        assert echo.delay(i).get(timeout=timeout) == i
    samples = []
    clock = time.perf_counter
    for i in range(n):
        began = clock()
        value = echo.delay(i).get(timeout=timeout)
        samples.append(clock() - began)
        if value != i:
            raise RuntimeError(f"echo({i}) returned {value!r}")
    app.close()
    return {"samples": samples}


def fan_in(n: int, *, warmup: int, timeout: float) -> dict[str, Any]:
    if warmup:
        expected = sum(i + i for i in range(warmup))
        warm = chord([add.s(i, i) for i in range(warmup)])(tsum.s())
        assert warm.get(timeout=timeout) == expected
    header = [add.s(i, i) for i in range(n)]
    began = time.perf_counter()
    value = chord(header)(tsum.s()).get(timeout=timeout)
    seconds = time.perf_counter() - began
    app.close()
    return {"seconds": seconds, "result": value}
