"""What RabbitMQ itself allows on this machine, without any task queue's code around it.

    python -m benchmarks.ceiling

1. Publish ceiling: 20,000 Celery-shaped messages, encoded beforehand, written in slices
   of 256 to a durable queue, persistent, with and without publisher confirms; the rate
   until RabbitMQ holds them all, and the CPU RabbitMQ's process used for it.
2. Drain ceiling: the same 20,000 messages already queued, taken by bare py-amqp
   consumers in separate processes (2, like the benchmark's `-c 2`), each with
   celeriac's window (4 messages) and one `basic.ack multiple` per 4 messages, doing
   nothing else with them; the rate from the first delivery to the last, as S1's drain,
   and the CPU RabbitMQ's process used.
3. Round-trip floor: a bare py-amqp consumer in another process stores a result in
   Redis (SET + PUBLISH) and acks; the client publishes with a confirm (as celeriac's
   `delay()` does) and then reads the result key. Median of 2,000 after 50 warm-ups.

They set the bar the S1 enqueue, S1 drain and S2 figures on RabbitMQ can approach but
not pass.
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

from benchmarks.processes import cpu_seconds
from celeriac import Celeriac
from celeriac.brokers.amqp.frames import encode_publish
from celeriac.brokers.amqp.message import basic_properties
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

    call = app.sender.build_call(noop.name, [], {}, {}, task=noop)[0]
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


def _frame(channel: Any, conn: amqp.Connection, queue: str) -> bytes:
    """The frames of one persistent no-op published to `queue`."""
    body, properties = _message()
    message = amqp.Message(body, **properties)
    return encode_publish(
        channel.channel_id, "", queue, message, mandatory=True, frame_max=conn.frame_max
    )


def _fill(channel: Any, conn: amqp.Connection, queue: str, frame: bytes, n: int) -> None:
    """Write `frame` `n` times in slices; return once `queue` holds them all."""
    for start in range(0, n, SLICE):
        conn.transport.write(frame * min(SLICE, n - start))
    while channel.queue_declare(queue, passive=True)[1] < n:
        time.sleep(0.002)


def publish_ceiling(n: int, *, confirm: bool) -> tuple[float, float]:
    """Messages per second and RabbitMQ's CPU seconds for `n` pre-encoded publishes."""
    queue = f"ceiling-{uuid.uuid4().hex[:8]}"
    conn = amqp.Connection(HOST)
    conn.connect()
    try:
        channel = conn.channel()
        channel.queue_declare(queue, durable=True, auto_delete=False)
        if confirm:
            channel.confirm_select()
        frame = _frame(channel, conn, queue)
        rabbit = _rabbit_process()
        before = cpu_seconds(rabbit)
        began = time.perf_counter()
        _fill(channel, conn, queue, frame, n)
        seconds = time.perf_counter() - began
        used = cpu_seconds(rabbit) - before
        channel.queue_delete(queue)
    finally:
        conn.close()
    return n / seconds, used


def _bare_consumer(queue: str, window: int, go: Any, report: Any) -> None:
    """Take messages from `queue` until it stays empty; ack every `window` of them at
    once. Reports (count, first delivery, last delivery) on `report`."""
    conn = amqp.Connection(HOST)
    conn.connect()
    channel = conn.channel()
    channel.basic_qos(0, window, False)
    seen = {"count": 0, "tag": 0, "first": 0.0, "last": 0.0}

    def on_message(message: amqp.Message) -> None:
        now = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
        if not seen["count"]:
            seen["first"] = now
        seen["count"] += 1
        seen["last"] = now
        seen["tag"] = message.delivery_tag
        if seen["count"] % window == 0:
            channel.basic_ack(message.delivery_tag, multiple=True)

    go.wait()
    channel.basic_consume(queue, callback=on_message)
    quiet = 0
    while quiet < 3:  # 0.6 s without a message: the queue is drained
        try:
            conn.drain_events(timeout=0.2)
            quiet = 0
        except TimeoutError:
            quiet += 1
    if seen["count"] % window:
        channel.basic_ack(seen["tag"], multiple=True)
    report.put((seen["count"], seen["first"], seen["last"]))
    conn.close()


def drain_ceiling(n: int, *, consumers: int = 2, window: int = 4) -> tuple[float, float]:
    """Messages per second and RabbitMQ's CPU seconds for bare consumers taking `n`
    queued messages."""
    queue = f"ceiling-{uuid.uuid4().hex[:8]}"
    conn = amqp.Connection(HOST)
    conn.connect()
    go = multiprocessing.Event()
    report: multiprocessing.Queue[tuple[int, float, float]] = multiprocessing.Queue()
    processes = [
        multiprocessing.Process(target=_bare_consumer, args=(queue, window, go, report))
        for _ in range(consumers)
    ]
    try:
        channel = conn.channel()
        channel.queue_declare(queue, durable=True, auto_delete=False)
        channel.confirm_select()
        _fill(channel, conn, queue, _frame(channel, conn, queue), n)
        for process in processes:
            process.start()
        time.sleep(1.0)  # connected and waiting for `go`
        rabbit = _rabbit_process()
        before = cpu_seconds(rabbit)
        go.set()
        reports = [report.get(timeout=120) for _ in processes]
        used = cpu_seconds(rabbit) - before
        channel.queue_delete(queue)
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
        conn.close()
    taken = sum(count for count, _, _ in reports)
    if taken != n:
        raise SystemExit(f"the bare consumers took {taken} of {n} messages")
    first = min(began for count, began, _ in reports if count)
    last = max(ended for count, _, ended in reports if count)
    # RabbitMQ's CPU includes the 0.6 s the consumers wait to see the queue stay empty,
    # during which it does next to nothing.
    return n / (last - first), used


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
    rate, cpu = drain_ceiling(20_000)
    print(f"drain ceiling, 2 bare consumers, window 4: {rate:,.0f} msg/s, RabbitMQ CPU {cpu:.2f} s")
    confirm_ms, trip_ms = round_trip_floor(2_000)
    print(f"round-trip floor: publish+confirm {confirm_ms:.3f} ms, whole trip {trip_ms:.3f} ms")


if __name__ == "__main__":
    main()
