"""The SQLite broker and backend with several real processes on one file.

Child processes run the module-level functions below (spawned, so they share nothing
with pytest, or forked where inheriting is the point) and report through a queue. Every
process a test starts is killed by pid at the end of the test if still alive.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import random
import signal
import sqlite3
import statistics
import sys
import time
import uuid
import warnings
from typing import TYPE_CHECKING, Any

import pytest

from celeriac import states
from celeriac.backends.sqlite import SQLiteBackend
from celeriac.brokers.base import Outgoing
from celeriac.brokers.sqlite import SQLiteBroker
from celeriac.connections.sqlite_watch import QUIET_AFTER
from celeriac.exceptions import ResultTimeout
from celeriac.protocol.codec import TaskCall, encode_task

if TYPE_CHECKING:
    from collections.abc import Iterator
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event
    from pathlib import Path

    from celeriac.protocol.message import Message

pytestmark = pytest.mark.integration

SPAWN = multiprocessing.get_context("spawn")
FORK = multiprocessing.get_context("fork")


def make_message(task_id: str, **headers: Any) -> Message:
    call = TaskCall(name="tests.echo", id=task_id, args=[task_id])
    call.headers = dict(headers)
    return encode_task(call)


@pytest.fixture
def processes() -> Iterator[list[BaseProcess]]:
    started: list[BaseProcess] = []
    yield started
    for process in started:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGKILL)
        process.join(10)


def start(processes: list[BaseProcess], process: BaseProcess) -> BaseProcess:
    processes.append(process)
    process.start()
    return process


def join_all(processes: list[BaseProcess], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.1, deadline - time.monotonic()))
    assert [p.exitcode for p in processes] == [0] * len(processes)


# -- child process bodies (module level: spawn imports them by name) --------------------


def produce(url: str, queue: str, prefix: str, count: int) -> None:
    broker = SQLiteBroker(url, consumer_id=f"producer-{prefix}")
    try:
        # Half one by one, half in batches: both paths under contention.
        for n in range(count // 2):
            broker.publish(make_message(f"{prefix}-{n}"), queue=queue)
        rest = range(count // 2, count)
        batch = [Outgoing(make_message(f"{prefix}-{n}"), queue=queue) for n in rest]
        for start_at in range(0, len(batch), 50):
            broker.publish_many(batch[start_at : start_at + 50])
    finally:
        broker.close()


def consume(url: str, queue: str, name: str, producers_done: Event, out: Queue[Any]) -> None:
    broker = SQLiteBroker(url, consumer_id=name)
    seen: list[tuple[str, bool]] = []
    try:
        while True:
            batch = broker.receive([queue], limit=10, timeout=0.5)
            if not batch:
                if producers_done.is_set():
                    break
                continue
            seen.extend((d.message.task_id or "", d.redelivered) for d in batch)
            broker.ack_many(batch)
    finally:
        broker.close()
    out.put((name, seen))


def measure_wake_latency(url: str, queue: str, count: int, out: Queue[Any]) -> None:
    broker = SQLiteBroker(url, consumer_id="latency")
    broker.declare(queue)
    out.put("ready")
    latencies = []
    for _ in range(count):
        [delivery] = broker.receive([queue], limit=1, timeout=30)
        latencies.append(time.time() - delivery.message.headers["sent_at"])
        broker.ack(delivery)
    broker.close()
    out.put(latencies)


def idle_receive_cpu(url: str, seconds: float, out: Queue[Any]) -> None:
    broker = SQLiteBroker(url, consumer_id="idle")
    broker.declare("idle")
    cpu, wall = time.process_time(), time.monotonic()
    got = broker.receive(["idle"], limit=1, timeout=seconds)
    out.put((len(got), time.process_time() - cpu, time.monotonic() - wall))
    broker.close()


def idle_wait_cpu(url: str, seconds: float, out: Queue[Any]) -> None:
    backend = SQLiteBackend(url)
    backend.get("nothing")  # open the file first: measure the wait alone
    cpu, wall = time.process_time(), time.monotonic()
    with contextlib.suppress(ResultTimeout):
        backend.wait("never-stored", timeout=seconds)
    out.put((time.process_time() - cpu, time.monotonic() - wall))
    backend.close()


def reserve_slots(url: str, key: str, count: int, interval: float, out: Queue[Any]) -> None:
    broker = SQLiteBroker(url, consumer_id=f"rate-{os.getpid()}")
    out.put([broker.reserve_rate_slot(key, interval=interval) for _ in range(count)])
    broker.close()


def report_chord_parts(
    url: str, group_id: str, indexes: list[int], start_at: float, out: Queue[Any]
) -> None:
    backend = SQLiteBackend(url)
    time.sleep(max(0.0, start_at - time.time()))  # all processes start together
    completions = []
    for index in indexes:
        parts = backend.chord_part_return(
            group_id, index=index, task_id=f"t{index}", status=states.SUCCESS, result=index
        )
        if parts is not None:
            completions.append([part.result for part in parts])
    backend.close()
    out.put(completions)


def store_later(url: str, task_id: str, delay: float, out: Queue[Any]) -> None:
    backend = SQLiteBackend(url)
    backend.get(task_id)
    time.sleep(delay)
    backend.store(backend.ready_meta(task_id, states.SUCCESS, "done"))
    out.put(time.time())
    backend.close()


def use_inherited_broker(broker: SQLiteBroker, prefix: str, out: Queue[Any]) -> None:
    """Runs in a forked child with the parent's broker object (and its connections)."""
    for n in range(50):
        broker.publish(make_message(f"{prefix}-{n}"), queue="forked")
    taken = broker.receive(["forked"], limit=20, timeout=1)
    broker.ack_many(taken)
    out.put([d.message.task_id for d in taken])


# -- tests -----------------------------------------------------------------------------


@pytest.mark.slow
def test_four_consumers_drain_two_producers_exactly_once(
    tmp_path: Path, processes: list[BaseProcess]
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    SQLiteBroker(url).declare("work")  # create the file before the race
    done = SPAWN.Event()
    out: Queue[Any] = SPAWN.Queue()
    consumers = [
        start(processes, SPAWN.Process(target=consume, args=(url, "work", f"c{n}", done, out)))
        for n in range(4)
    ]
    producers = [
        start(processes, SPAWN.Process(target=produce, args=(url, "work", f"p{n}", 1000)))
        for n in range(2)
    ]
    join_all(producers)
    done.set()
    reports = dict(out.get(timeout=60) for _ in consumers)
    join_all(consumers)
    received = [task_id for seen in reports.values() for task_id, _ in seen]
    published = {f"p{p}-{n}" for p in range(2) for n in range(1000)}
    assert len(received) == 2000  # nothing delivered twice ...
    assert set(received) == published  # ... and nothing lost
    assert not any(redelivered for seen in reports.values() for _, redelivered in seen)
    assert sum(1 for seen in reports.values() if seen) >= 2  # the work was shared
    broker = SQLiteBroker(url)
    assert broker.size("work") == 0
    with broker._db.use() as connection:
        assert connection.execute("SELECT count(*) FROM message").fetchone() == (0,)
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    broker.close()


def test_forked_children_reconnect_and_the_parent_keeps_working(
    tmp_path: Path, processes: list[BaseProcess]
) -> None:
    url = f"sqlite:///{tmp_path / 'fork.db'}"
    broker = SQLiteBroker(url, consumer_id="parent")
    backend = SQLiteBackend(url)
    # Open connections and start the watcher thread before forking.
    broker.publish(make_message("before"), queue="forked")
    assert broker.receive(["empty"], limit=1, timeout=0.1) == []
    backend.store(backend.ready_meta("r", states.SUCCESS, 1))
    with broker._db.use() as before_fork:
        pass
    out: Queue[Any] = FORK.Queue()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads (our watcher).
        warnings.simplefilter("ignore", DeprecationWarning)
        children = [
            start(processes, FORK.Process(target=use_inherited_broker, args=(broker, f"k{n}", out)))
            for n in range(2)
        ]
    # The fork closed the parent's connections (none was copied open into a child) ...
    with pytest.raises(sqlite3.ProgrammingError):
        before_fork.execute("SELECT 1")
    # ... and the parent goes on using the same objects while the children run.
    for n in range(50):
        broker.publish(make_message(f"parent-{n}"), queue="forked")
    taken_by_children: list[str | None] = [
        task_id for _ in children for task_id in out.get(timeout=30)
    ]
    join_all(children)
    rest: list[str | None] = []
    while batch := broker.receive(["forked"], limit=100, timeout=0.2):
        rest.extend(d.message.task_id for d in batch)
        broker.ack_many(batch)
    everything = taken_by_children + rest
    assert len(everything) == 151
    assert len(set(everything)) == 151
    meta = backend.get("r")
    assert meta is not None
    assert meta.result == 1
    with broker._db.use() as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    broker.close()
    backend.close()


def test_a_waiting_consumer_wakes_within_50_ms_of_another_process_publishing(
    tmp_path: Path, processes: list[BaseProcess]
) -> None:
    url = f"sqlite:///{tmp_path / 'latency.db'}"
    out: Queue[Any] = SPAWN.Queue()
    # Short gaps keep the change watcher at its busy pace; gaps longer than QUIET_AFTER
    # let it slow to its quiet pace before the publish. Seeded: every run the same gaps.
    rng = random.Random(24)
    gaps = [rng.uniform(0.05, 0.15) for _ in range(12)] + [
        rng.uniform(QUIET_AFTER + 0.1, QUIET_AFTER + 0.3) for _ in range(6)
    ]
    start(processes, SPAWN.Process(target=measure_wake_latency, args=(url, "q", len(gaps), out)))
    assert out.get(timeout=30) == "ready"
    producer = SQLiteBroker(url, consumer_id="producer")
    for n, gap in enumerate(gaps):
        time.sleep(gap)  # the consumer is idle, waiting, each time
        message = make_message(f"m{n}", sent_at=0.0)
        message.headers["sent_at"] = time.time()
        producer.publish(message, queue="q")
    latencies = out.get(timeout=30)
    producer.close()
    join_all(processes)
    busy, quiet = latencies[:12], latencies[12:]
    report = (
        f"wake latency: busy median {statistics.median(busy) * 1000:.1f} ms, "
        f"quiet median {statistics.median(quiet) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
    print(report, file=sys.stderr)
    # The 50 ms target of the SQLite broker. Measured on the 2-core machine while other
    # tests ran: busy median 3-8 ms (10 ms polling), quiet median typically 10-13 ms, at
    # most 17 ms (25 ms polling), max 13-52 ms; the bounds are over 3x the typical values.
    assert statistics.median(busy) < 0.05, report
    assert statistics.median(quiet) < 0.05, report
    assert max(latencies) < 1.0, report


@pytest.mark.slow
def test_an_idle_consumer_uses_under_two_percent_of_a_core(
    tmp_path: Path, processes: list[BaseProcess]
) -> None:
    url = f"sqlite:///{tmp_path / 'idle.db'}"
    out: Queue[Any] = SPAWN.Queue()
    start(processes, SPAWN.Process(target=idle_receive_cpu, args=(url, 3.0, out)))
    got, cpu, wall = out.get(timeout=30)
    join_all(processes)
    report = f"idle receive: {cpu * 1000:.0f} ms CPU in {wall:.2f} s = {cpu / wall:.2%} of a core"
    print(report, file=sys.stderr)
    assert got == 0
    assert wall >= 2.9
    assert cpu / wall < 0.02, report


@pytest.mark.slow
def test_an_idle_result_wait_uses_under_two_percent_of_a_core(
    tmp_path: Path, processes: list[BaseProcess]
) -> None:
    url = f"sqlite:///{tmp_path / 'idle.db'}"
    out: Queue[Any] = SPAWN.Queue()
    start(processes, SPAWN.Process(target=idle_wait_cpu, args=(url, 3.0, out)))
    cpu, wall = out.get(timeout=30)
    join_all(processes)
    report = f"idle wait: {cpu * 1000:.0f} ms CPU in {wall:.2f} s = {cpu / wall:.2%} of a core"
    print(report, file=sys.stderr)
    assert wall >= 2.9
    assert cpu / wall < 0.02, report


def test_rate_slots_are_evenly_spaced_across_processes(
    tmp_path: Path, processes: list[BaseProcess]
) -> None:
    url = f"sqlite:///{tmp_path / 'rate.db'}"
    SQLiteBroker(url).declare("q")
    out: Queue[Any] = SPAWN.Queue()
    # Slots run ahead of the clock by one interval per reservation: with 1 s intervals
    # every process, however late it starts, reserves while the last slot is in the future.
    for _ in range(3):
        start(processes, SPAWN.Process(target=reserve_slots, args=(url, "k", 10, 1.0, out)))
    slots = sorted(slot for _ in range(3) for slot in out.get(timeout=30))
    join_all(processes)
    gaps = [later - earlier for earlier, later in itertools.pairwise(slots)]
    assert len(slots) == 30
    assert all(gap == pytest.approx(1.0, abs=1e-6) for gap in gaps)


def test_a_chord_joins_once_across_processes(tmp_path: Path, processes: list[BaseProcess]) -> None:
    url = f"sqlite:///{tmp_path / 'chord.db'}"
    group_id = str(uuid.uuid4())
    SQLiteBackend(url).set_chord_size(group_id, 40)
    out: Queue[Any] = SPAWN.Queue()
    start_at = time.time() + 1.5
    for worker in range(4):
        indexes = list(range(worker, 40, 4))
        start(
            processes,
            SPAWN.Process(target=report_chord_parts, args=(url, group_id, indexes, start_at, out)),
        )
    completions = [done for _ in range(4) for done in out.get(timeout=30)]
    join_all(processes)
    assert completions == [list(range(40))]


def test_a_result_wait_wakes_soon_after_another_process_stores(
    tmp_path: Path, processes: list[BaseProcess]
) -> None:
    url = f"sqlite:///{tmp_path / 'wait.db'}"
    backend = SQLiteBackend(url)
    out: Queue[Any] = SPAWN.Queue()
    task_id = str(uuid.uuid4())
    start(processes, SPAWN.Process(target=store_later, args=(url, task_id, 1.0, out)))
    meta = backend.wait(task_id, timeout=30)
    woke_at = time.time()
    stored_at = out.get(timeout=30)
    join_all(processes)
    backend.close()
    report = f"result wait woke {(woke_at - stored_at) * 1000:.1f} ms after the store"
    print(report, file=sys.stderr)
    assert meta.result == "done"
    assert woke_at - stored_at < 0.5, report
