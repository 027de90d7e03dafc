"""Scenario 3: the broker restarts (or its lock holder dies) while tasks flow.

A producer thread publishes `work(5 ms)` tasks at a steady pace through a worker while
the broker goes away mid-run:

- Redis: a private `redis-server` with `appendonly yes` is stopped (SIGTERM: it fsyncs
  its AOF) and started again on the same port and directory.
- RabbitMQ: a private node (one per test run: starting one is slow) does `stop_app` and
  `start_app`; its queues are durable and messages persistent.
- SQLite has no server. Its analogue is the death of the process holding the write
  lock: a process is SIGKILLed inside a write transaction (`BEGIN IMMEDIATE` plus an
  insert), and a second producer process is SIGKILLed mid-publish. The file must then
  pass `PRAGMA integrity_check`.

For each: no publish raised (the outage is shorter than the publisher's reconnect loop),
lost = 0 over every confirmed publish (an id is recorded only after its publish
returned), and the worker resumes within 15 s: the time from the server being back (or
the lock holder dying) to the next finish record. Duplicates: none on SQLite and Redis;
on RabbitMQ only messages delivered and unacked when the connection dropped (at most the
prefetch window) and a publish whose confirm was lost with the connection (sent again)
run again.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.chaos.chaos_tasks import SOURCE
from tests.chaos.conftest import size
from tests.chaos.ledger import Ledger
from tests.chaos.outages import Producer, first_finish_after, wait_all_finished
from tests.helpers import unique, wait_for
from tests.integration.conftest import import_tasks, write_tasks
from tests.private_servers import PrivateRedis, require_redis_server

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Iterator

    from tests.integration.conftest import RunWorker
    from tests.private_servers import Node

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.integration,
    pytest.mark.timeout(size(120, 1200)),
]

# The budget: workers resume within 15 s of the broker being back.
RESUME_BUDGET = 15.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "redis", "amqp"])
def restart_broker(
    request: pytest.FixtureRequest, tasks_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, object]]:
    """The broker of this run: its kind and the private server (None for SQLite)."""
    kind: str = request.param
    for variable in ("TEST_BROKER_URL", "TEST_BACKEND_URL", "TEST_KEY_PREFIX"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TEST_QUEUE", unique("restart"))
    monkeypatch.delenv("TEST_DEAD_LETTER_QUEUE", raising=False)
    if kind == "sqlite":
        yield kind, None
    elif kind == "redis":
        require_redis_server()
        directory = tasks_dir.parent / "redis"
        directory.mkdir()
        server = PrivateRedis(directory)  # appendonly yes
        try:
            server.start()
            monkeypatch.setenv("TEST_BROKER_URL", server.url)
            yield kind, server
        finally:
            server.stop()
    else:
        private: Node = request.getfixturevalue("node")
        monkeypatch.setenv("TEST_BROKER_URL", private.url)
        yield kind, private


HOLD_LOCK = textwrap.dedent(
    """
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
    db.execute("BEGIN IMMEDIATE")
    db.execute("CREATE TABLE IF NOT EXISTS chaos_lock (n INTEGER)")
    db.execute("INSERT INTO chaos_lock VALUES (1)")
    print("locked", flush=True)
    time.sleep(600)
    """
)

PRODUCE = textwrap.dedent(
    """
    import sys, time, uuid
    sys.path.insert(0, ".")
    from tests.chaos.ledger import Ledger
    import tasks
    from pathlib import Path
    ledger = Ledger(Path("."))
    intent = Path("killed-producer-intent")
    print("producing", flush=True)
    while True:
        # The id goes down before the publish: the SIGKILL may land after the publish
        # and before the ledger line, and that one task then runs unrecorded.
        task_id = str(uuid.uuid4())
        intent.write_text(task_id)
        tasks.work.apply_async((5,), task_id=task_id)
        ledger.published(task_id)
        time.sleep(0.002)
    """
)


def _sqlite_fault(tasks_dir: Path, rng: random.Random) -> float:
    """SIGKILL a process inside a write transaction and a producer mid-publish; returns
    the moment (epoch) the lock was free again."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCE], cwd=tasks_dir, env=env, stdout=subprocess.PIPE
    )
    holder: subprocess.Popen[bytes] | None = None
    try:
        assert producer.stdout is not None
        assert producer.stdout.readline().strip() == b"producing"
        time.sleep(rng.uniform(0.3, 1.0))
        producer.send_signal(signal.SIGKILL)
        producer.wait(10)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(tasks_dir / "celeriac.db")],
            stdout=subprocess.PIPE,
        )
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"locked"
        time.sleep(rng.uniform(0.5, 1.5))  # everybody else waits on the lock meanwhile
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        return time.time()
    finally:
        for process in (producer, holder):
            if process is not None:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
                if process.stdout is not None:
                    process.stdout.close()


def test_a_broker_restart_loses_no_confirmed_publish_and_workers_resume(
    restart_broker: tuple[str, object],
    tasks_dir: Path,
    run_worker: RunWorker,
    rng: random.Random,
) -> None:
    kind, server = restart_broker
    write_tasks(tasks_dir, SOURCE)
    ledger = Ledger(tasks_dir)
    tasks = import_tasks(tasks_dir)
    started = time.monotonic()
    worker = run_worker("-c", "2")
    producer = Producer(tasks, ledger, total=size(400, 4000), pause=0.01).start()
    wait_for(lambda: producer.confirmed >= producer.total // 3, timeout=60, what="first third")
    wait_for(lambda: ledger.finished_ids(), timeout=30, what="first finish")
    outage: Callable[[], float]
    down = rng.uniform(0.5, 2.0)
    if kind == "redis":
        assert isinstance(server, PrivateRedis)

        def outage() -> float:
            server.restart(pause=down)
            return time.time()

    elif kind == "amqp":

        def outage() -> float:
            server.stop_app()  # type: ignore[attr-defined]
            time.sleep(down)
            server.start_app()  # type: ignore[attr-defined]
            return time.time()

    else:

        def outage() -> float:
            return _sqlite_fault(tasks_dir, rng)

    back = outage()
    producer.join(timeout=300)
    all_done = wait_all_finished(ledger, timeout=size(90, 600))
    report = ledger.check()
    resume = first_finish_after(ledger, back)
    print(
        f"\n{kind}: down {down:.2f}s, resumed {resume}s after the broker was back; "
        f"confirmed={producer.confirmed} raised={len(producer.errors)} "
        f"{report.summary()} wall={time.monotonic() - started:.1f}s"
    )
    detail = f"{report.summary()} (see CHAOS_SEED above); worker log:\n{worker.output()[-3000:]}"
    assert report.lost == [], detail
    assert all_done, detail
    # A phantom (a run nobody recorded publishing) is allowed only on SQLite, and only
    # the one task the producer killed mid-publish may have sent unrecorded.
    allowed: set[str] = set()
    if kind == "sqlite":
        allowed = {(tasks_dir / "killed-producer-intent").read_text()}
    assert set(report.phantoms) <= allowed, detail
    assert resume is not None, detail
    assert resume <= RESUME_BUDGET, detail
    # The outage (0.5-2 s) is shorter than the publisher's reconnect loop: every publish
    # waits it out and lands; not one raises.
    assert producer.errors == [], f"{len(producer.errors)} publishes raised: {producer.errors[:3]}"
    assert producer.confirmed == producer.total, detail
    if kind == "amqp":
        # At-least-once, from two documented causes only: a message delivered but not yet
        # acked when the connection dropped is delivered again (at most the worker's
        # prefetch window, 2 children x 4), and a publish whose confirm was lost with the
        # connection is sent again on the next one (the producer has one in flight).
        runs = [e for e in ledger.events() if e["id"] in report.duplicates]
        twice = f"runs of the duplicated ids (restart done at {back}): {runs}\n{worker.output()}"
        assert report.duplicate_runs <= 2 * 4 + 1, twice
        assert max(report.duplicates.values(), default=0) <= 3, twice
    else:
        # No worker process died and every ack was sent or retried: nothing runs twice.
        assert report.duplicates == {}, detail
    assert worker.process.poll() is None, detail
    if kind == "sqlite":
        database = sqlite3.connect(tasks_dir / "celeriac.db")
        try:
            [(verdict,)] = database.execute("PRAGMA integrity_check").fetchall()
        finally:
            database.close()
        assert verdict == "ok"
