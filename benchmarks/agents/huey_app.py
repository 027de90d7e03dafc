"""Huey's side: the same tasks with `RedisHuey` (Huey has no RabbitMQ storage).

Consumer: `huey_consumer benchmarks.agents.huey_app.huey -w N -k process|thread`. The
queue name is the run's queue. `notify_result=True` lets `Result.get(blocking=True)`
wait on a blocking pop instead of Huey's default polling (which starts at 50 ms): the
fastest setting Huey documents. Huey has neither a bulk enqueue nor chords, so
`enqueue --bulk` and `fan_in` are not offered.
"""

from __future__ import annotations

import os
import time
from typing import Any

from huey import RedisHuey
from redis import ConnectionPool

from benchmarks.agents.recorder import task_finished, task_started
from benchmarks.agents.timing import round_trips

BROKER = os.environ.get("BENCH_BROKER", "")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")

# One connection per thread at most: S4 runs 500 threads, past redis-py's default cap.
huey = RedisHuey(
    QUEUE,
    connection_pool=ConnectionPool.from_url(BROKER, max_connections=2048),
    notify_result=True,
)


@huey.task()
def noop() -> None:
    task_started()
    task_finished()


@huey.task()
def echo(value: int) -> int:
    return value


@huey.task()
def sleeper(seconds: float) -> None:
    task_started()
    time.sleep(seconds)
    task_finished()


def enqueue(n: int, *, bulk: bool) -> dict[str, Any]:
    if bulk:
        raise NotImplementedError("Huey has no bulk enqueue")
    noop()  # connect outside the timed part
    began = time.perf_counter()
    for _ in range(n):
        noop()
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "count": n}


def sleepers(n: int, seconds: float) -> dict[str, Any]:
    for _ in range(n):
        sleeper(seconds)
    return {"count": n}


def latency(n: int, *, warmup: int, timeout: float) -> dict[str, Any]:
    return round_trips(lambda i: echo(i).get(blocking=True, timeout=timeout), n, warmup=warmup)
