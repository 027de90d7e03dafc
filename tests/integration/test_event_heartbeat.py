"""The worker-heartbeat event rides on the presence tick: Celery's fields and its 2 s
`freq`, a stopped worker (SIGSTOP, its children with it) sends none, and it resumes once
continued. On Redis (presence records) and RabbitMQ (none: the tick runs anyway), from a
prefork worker (its first child's tick, naming the supervisor's pid) and a threads one."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import wait_for
from tests.integration.interop_redis import import_module

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.integration.conftest import RunWorker
    from tests.integration.mixed_fleet import Fleet

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.slow]


class Beats:
    """Collects one node's worker-heartbeat events, with the time each arrived."""

    def __init__(self, fleet: Fleet, node: str) -> None:
        self.node = node
        self.cproj = import_module(fleet.directory, "cproj")
        self.seen: list[dict[str, Any]] = []
        self.receiver = self.cproj.app.events.Receiver(
            handlers={"worker-heartbeat": self._on_beat}, routing_key="worker.#"
        )
        self.thread = threading.Thread(
            target=self.receiver.capture, kwargs={"timeout": 120, "wakeup": False}
        )

    def _on_beat(self, event: dict[str, Any]) -> None:
        if event.get("hostname") == self.node:
            self.seen.append({**event, "arrived": time.monotonic()})

    def count(self) -> int:
        return len(self.seen)

    def since(self, moment: float) -> list[dict[str, Any]]:
        return [beat for beat in self.seen if beat["arrived"] > moment]


@pytest.fixture
def beats(fleet: Fleet) -> Iterator[Beats]:
    collector = Beats(fleet, f"{fleet.queue}@test")
    collector.thread.start()
    try:
        assert collector.receiver.ready.wait(20)
        yield collector
    finally:
        collector.receiver.should_stop = True
        collector.thread.join(30)
        collector.cproj.app.close()


# Each pool on one broker by default (about 15 s each); the other pairs in the full profile.
@pytest.mark.parametrize(
    ("fleet", "pool"),
    [
        ("redis", "prefork"),
        ("amqp", "threads"),
        pytest.param("redis", "threads", marks=pytest.mark.full),
        pytest.param("amqp", "prefork", marks=pytest.mark.full),
    ],
    indirect=["fleet"],
)
def test_heartbeats_stop_while_the_worker_is_stopped_and_resume(
    fleet: Fleet, run_worker: RunWorker, beats: Beats, pool: str
) -> None:
    worker = run_worker("-P", pool, "-c", "2", "-n", beats.node, session=True)
    wait_for(lambda: beats.count() >= 2, timeout=30, what="two heartbeats")
    first, second = beats.seen[:2]
    for field in ("freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys"):
        assert field in first, field
    assert first["freq"] == 2.0
    assert first["sw_ident"] == "celeriac"
    # Named after the worker (the supervisor), whichever process sends it.
    assert first["pid"] == worker.pid
    # Every freq seconds (8 presence ticks), give or take a loaded machine.
    assert 1.0 < second["arrived"] - first["arrived"] < 6.0

    os.killpg(worker.pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        time.sleep(5.0)  # two and a half heartbeats' worth
        # At most one that was on its way as the worker stopped.
        assert len(beats.since(stopped + 0.5)) == 0
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    resumed = time.monotonic()
    wait_for(lambda: len(beats.since(resumed)) >= 2, timeout=30, what="heartbeats again")
