"""What RabbitMQ itself allows on this machine, without any task queue's code around it.

    python -m benchmarks.ceiling

1. Publish ceiling: 20,000 Celery-shaped messages, encoded beforehand, written in slices
   of 256 to a durable queue, persistent, with and without publisher confirms; the rate
   until RabbitMQ holds them all, and the CPU RabbitMQ's process used for it.
2. Round-trip floor: a bare py-amqp consumer in another process stores a result in
   Redis (SET + PUBLISH) and acks; the client publishes with a confirm (as celeriac's
   `delay()` does) and then reads the result key. Median of 2,000 after 50 warm-ups.

Both set the bar the S1 enqueue and S2 figures on RabbitMQ can approach but not pass.
Servers as for `python -m benchmarks`; Redis database 15 must be empty, and the keys
written are deleted afterwards.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import statistics
import time
import uuid
from typing import Any

import amqp
import psutil
import redis

from celeriac import Celeriac
from celeriac.brokers.amqp_frames import encode_publish
from celeriac.brokers.amqp_message import basic_properties
from celeriac.protocol.codec import encode_task

HOST = "127.0.0.1:5672"
REDIS_DB = 15
SLICE = 256


def _message() -> tuple[bytes, dict[str, Any]]:
    """Body and AMQP properties of the benchmark's no-op, as celeriac sends it."""
    app = Celeriac("bench", broker=f"amqp://guest:guest@{HOST}//")

    @app.task(name="benchmarks.agents.celeriac_app.noop", ignore_result=True)
    def noop() -> None:
        pass

    call = app._build_call(noop.name, [], {}, {}, task=noop)[0]
    message = encode_task(call)
    properties = dict(basic_properties(message, priority=None))
    properties.update(
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        application_headers=message.headers,
    )
    return message.body, properties


def _rabbit_process() -> psutil.Process:
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "beam.smp":
            return process
    raise SystemExit("no beam.smp process: is RabbitMQ running on this machine?")


def publish_ceiling(n: int, *, confirm: bool) -> tuple[float, float]:
    """Messages per second and RabbitMQ's CPU seconds for `n` pre-encoded publishes."""
    body, properties = _message()
    queue = f"ceiling-{uuid.uuid4().hex[:8]}"
    conn = amqp.Connection(HOST)
    conn.connect()
    try:
        channel = conn.channel()
        channel.queue_declare(queue, durable=True, auto_delete=False)
        if confirm:
            channel.confirm_select()
        frame = encode_publish(
            channel.channel_id,
            "",
            queue,
            amqp.Message(body, **properties),
            mandatory=True,
            frame_max=conn.frame_max,
        )
        rabbit = _rabbit_process()
        before = rabbit.cpu_times()
        began = time.perf_counter()
        for start in range(0, n, SLICE):
            conn.transport.write(frame * min(SLICE, n - start))
        while channel.queue_declare(queue, passive=True)[1] < n:
            time.sleep(0.002)
        seconds = time.perf_counter() - began
        after = rabbit.cpu_times()
        channel.queue_delete(queue)
    finally:
        conn.close()
    used = (after.user + after.system) - (before.user + before.system)
    return n / seconds, used


def _bare_worker(queue: str, ready: Any, stop: Any) -> None:
    conn = amqp.Connection(HOST)
    conn.connect()
    channel = conn.channel()
    channel.basic_qos(0, 8, False)
    results = redis.Redis(port=6379, db=REDIS_DB)

    def on_message(message: amqp.Message) -> None:
        key = "floor-" + message.properties["application_headers"]["id"]
        pipe = results.pipeline(transaction=False)
        pipe.set(key, b'{"status": "SUCCESS", "result": null}')
        pipe.publish(key, b"")
        pipe.execute()
        channel.basic_ack(message.delivery_tag)

    channel.basic_consume(queue, callback=on_message)
    ready.set()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.2)
    conn.close()


def round_trip_floor(n: int, warmup: int = 50) -> tuple[float, float]:
    """Median publish-with-confirm and whole round trip, in milliseconds."""
    body, properties = _message()
    queue = f"floor-{uuid.uuid4().hex[:8]}"
    conn = amqp.Connection(HOST)
    conn.connect()
    channel = conn.channel()
    channel.queue_declare(queue, durable=True, auto_delete=False)
    results = redis.Redis(port=6379, db=REDIS_DB)
    ready, stop = multiprocessing.Event(), multiprocessing.Event()
    worker = multiprocessing.Process(target=_bare_worker, args=(queue, ready, stop))
    worker.start()
    confirms: list[float] = []
    trips: list[float] = []
    keys: list[str] = []
    try:
        ready.wait(10)
        for i in range(n + warmup):
            task_id = str(uuid.uuid4())
            keys.append("floor-" + task_id)
            headers = dict(properties["application_headers"], id=task_id)
            message = amqp.Message(body, **dict(properties, application_headers=headers))
            began = time.perf_counter()
            channel.basic_publish_confirm(message, "", queue, mandatory=True)
            confirmed = time.perf_counter()
            while results.get("floor-" + task_id) is None:
                pass
            ended = time.perf_counter()
            if i >= warmup:
                confirms.append(confirmed - began)
                trips.append(ended - began)
    finally:
        stop.set()
        worker.join(10)
        if worker.is_alive():
            worker.kill()
            worker.join()
        channel.queue_delete(queue)
        conn.close()
        for start in range(0, len(keys), 500):
            results.delete(*keys[start : start + 500])
    return statistics.median(confirms) * 1e3, statistics.median(trips) * 1e3


def main() -> None:
    if redis.Redis(port=6379, db=REDIS_DB).dbsize():
        raise SystemExit(f"Redis database {REDIS_DB} is not empty; the benchmark needs it")
    for confirm in (True, False):
        rate, cpu = publish_ceiling(20_000, confirm=confirm)
        label = "with confirms" if confirm else "no confirms"
        print(f"publish ceiling, persistent, {label}: {rate:,.0f} msg/s, RabbitMQ CPU {cpu:.2f} s")
    confirm_ms, trip_ms = round_trip_floor(2_000)
    print(f"round-trip floor: publish+confirm {confirm_ms:.3f} ms, whole trip {trip_ms:.3f} ms")


if __name__ == "__main__":
    main()
