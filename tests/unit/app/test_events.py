"""`app.events.State`: folding Celery-format events into workers and tasks."""

from __future__ import annotations

import time

from celeriac.app.events import State


def test_a_task_moves_through_its_states() -> None:
    state = State()
    now = time.time()
    state.event({"type": "task-received", "uuid": "a", "name": "t.add", "args": "(1, 2)",
                 "hostname": "w1@h", "timestamp": now})  # fmt: skip
    state.event({"type": "task-started", "uuid": "a", "hostname": "w1@h", "timestamp": now + 1})
    state.event({"type": "task-succeeded", "uuid": "a", "result": "3", "runtime": 0.5,
                 "hostname": "w1@h", "timestamp": now + 2})  # fmt: skip
    task = state.tasks["a"]
    assert (task.name, task.state, task.result, task.runtime) == ("t.add", "SUCCESS", "3", 0.5)
    assert task.received == now
    assert task.started == now + 1
    assert task.succeeded == now + 2
    assert task.hostname == "w1@h"


def test_a_worker_is_alive_until_two_beats_are_missed_or_it_goes_offline() -> None:
    state = State()
    state.event({"type": "worker-heartbeat", "hostname": "w1@h", "freq": 2.0,
                 "timestamp": time.time(), "active": 1, "processed": 5})  # fmt: skip
    state.event({"type": "worker-heartbeat", "hostname": "w2@h", "freq": 2.0,
                 "timestamp": time.time() - 10})  # fmt: skip
    assert [w.hostname for w in state.alive_workers()] == ["w1@h"]
    assert state.workers["w1@h"].processed == 5
    state.event({"type": "worker-offline", "hostname": "w1@h", "timestamp": time.time()})
    assert state.alive_workers() == []
