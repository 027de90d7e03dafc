"""Dramatiq's side: the same tasks as actors, with its Redis or RabbitMQ broker.

Worker: `dramatiq benchmarks.agents.dramatiq_app --processes P --threads T -Q $BENCH_QUEUE`.
Results go to Dramatiq's Redis results backend (`Results` middleware), which waits with
a blocking pop, so `get_result(block=True)` is notified rather than polling. Dramatiq has
no bulk publish (a `group` sends its messages one by one) and no chord whose body gets
the header's results, so `enqueue --bulk` and `fan_in` are not offered.
"""

from __future__ import annotations

import os
import time
from typing import Any

import dramatiq
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from benchmarks.agents.recorder import task_finished, task_started
from benchmarks.agents.timing import round_trips

BROKER = os.environ.get("BENCH_BROKER", "")
BACKEND = os.environ.get("BENCH_BACKEND") or None
QUEUE = os.environ.get("BENCH_QUEUE", "bench")

broker: Any
if BROKER.startswith("amqp"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=BROKER)
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=BROKER)
if BACKEND:
    broker.add_middleware(Results(backend=RedisBackend(url=BACKEND)))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop() -> None:
    task_started()
    task_finished()


@dramatiq.actor(queue_name=QUEUE, max_retries=0, store_results=True)
def echo(value: int) -> int:
    return value


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def sleeper(seconds: float) -> None:
    task_started()
    time.sleep(seconds)
    task_finished()


def enqueue(n: int, *, bulk: bool) -> dict[str, Any]:
    if bulk:
        raise NotImplementedError("Dramatiq has no bulk publish")
    noop.send()  # connect and declare outside the timed part
    began = time.perf_counter()
    for _ in range(n):
        noop.send()
    seconds = time.perf_counter() - began
    broker.close()
    return {"seconds": seconds, "count": n}


def sleepers(n: int, seconds: float) -> dict[str, Any]:
    for _ in range(n):
        sleeper.send(seconds)
    broker.close()
    return {"count": n}


def latency(n: int, *, warmup: int, timeout: float) -> dict[str, Any]:
    wait_ms = int(timeout * 1000)
    result = round_trips(
        lambda i: echo.send(i).get_result(block=True, timeout=wait_ms), n, warmup=warmup
    )
    broker.close()
    return result
