"""celeriac's side: the app and tasks its worker loads, and the client actions.

Worker: `celeriac -A benchmarks.agents.celeriac_app worker -Q $BENCH_QUEUE ...`.
Settings are celeriac's defaults except the URLs and the queue, so the figures are what
a user gets out of the box.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from benchmarks.agents.recorder import task_finished, task_started
from benchmarks.agents.slow_server import read_slow_reply
from benchmarks.agents.timing import round_trips, timed_chord
from celeriac import Celeriac, chord, group

BROKER = os.environ.get("BENCH_BROKER", "")
BACKEND = os.environ.get("BENCH_BACKEND") or None
QUEUE = os.environ.get("BENCH_QUEUE", "bench")

# S4 sync: every other task sleeps, the others read from the slow server.
SYNC_KINDS = ("sleep", "socket")

_transport: dict[str, Any] = {}
if BROKER.startswith("amqp"):
    # A dead-letter queue of this run's own, which the runner deletes afterwards.
    _transport["dead_letter_queue"] = f"{QUEUE}.dead"
_backend_transport: dict[str, Any] = {}
if BACKEND and BACKEND.startswith("rpc"):
    _backend_transport["broker_url"] = BROKER

app = Celeriac(
    "bench",
    broker=BROKER,
    backend=BACKEND,
    task_default_queue=QUEUE,
    broker_transport_options=_transport,
    result_backend_transport_options=_backend_transport,
)


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
async def sleeper(seconds: float) -> None:
    task_started()
    await asyncio.sleep(seconds)
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
    with app.producer_batch():
        for _ in range(n):
            sleeper.delay(seconds)
    app.close()
    return {"count": n}


def sync_sleepers(n: int, seconds: float) -> dict[str, Any]:
    with app.producer_batch():
        for i in range(n):
            sync_sleeper.delay(seconds, SYNC_KINDS[i % 2])
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
