"""Three `celeriac beat` processes on one schedule; the leader is SIGKILLed twice while a
1-second entry runs for 20 s (30 s in the full profile), on Redis and on SQLite.

Checks docs/periodic-tasks.md, "High availability": exactly one beat sends; when it dies
a follower leads within the lease time; each tick (an entry's scheduled time) is sent at
most once, and ticks are missing only inside the takeover windows (there the latest
missed tick is sent once, never one per missed tick). Every message beat sent stays in
the queue (no worker runs), and the test reads them all at the end.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.chaos.conftest import size
from tests.helpers import require_redis, unique, wait_for

if TYPE_CHECKING:
    import random
    from collections.abc import Iterator

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(300)]

LEASE = 3.0
# Seconds the entry runs; a leader is killed at a random moment in each kill window
# (seconds after the first leader was seen), the second window opening after the first
# takeover has had its 3.2 s worst case. The full profile runs longer.
RUN_FOR = float(size(20, 30))
KILL_WINDOWS = (4.0, 11.0) if RUN_FOR < 30 else (6.0, 17.0)
# Measured on this 2-core machine: a follower sent its first tick 2.1-3.2 s after the
# leader was killed (the 3 s lease plus the follower's 50 ms slack). A tick gap is at
# most the takeover plus one interval; the bound allows 2 s more for a loaded machine.
MAX_GAP = LEASE + 1.0 + 2.0

SOURCE = """
import os

from celeriac import Celeriac

app = Celeriac("beatchaos", broker=os.environ["TEST_BROKER_URL"])
app.conf.update(
    task_default_queue=os.environ["TEST_QUEUE"],
    broker_transport_options={"global_keyprefix": os.environ.get("TEST_KEY_PREFIX", "")},
    beat_lease_seconds=float(os.environ["TEST_LEASE"]),
)
app.conf.beat_schedule = {"every-second": {"task": "beatchaos.tick", "schedule": 1.0}}


@app.task(name="beatchaos.tick")
def tick():
    return None
"""


@dataclass
class Beat:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(params=["redis", "sqlite"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    name = unique("beat")
    env = {"TEST_QUEUE": name, "TEST_KEY_PREFIX": f"{name}:", "TEST_LEASE": str(LEASE)}
    if request.param == "redis":
        url = require_redis()
        env["TEST_BROKER_URL"] = url
    else:
        env["TEST_BROKER_URL"] = f"sqlite:///{tmp_path / 'beat.db'}"
    (tmp_path / "tasks.py").write_text(textwrap.dedent(SOURCE))
    env["DIR"] = str(tmp_path)
    yield env
    if request.param == "redis":
        import redis

        client = redis.Redis.from_url(env["TEST_BROKER_URL"])
        keys = list(client.scan_iter(match=f"{name}:*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def beats(place: dict[str, str]) -> Iterator[list[Beat]]:
    started: list[Beat] = []
    environment = {**os.environ, **place, "PYTHONUNBUFFERED": "1"}
    for index in range(3):
        log = Path(place["DIR"]) / f"beat-{index}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "celeriac", "-A", "tasks", "beat", "-l", "info"],
                cwd=place["DIR"],
                stdout=handle,
                stderr=handle,
                env=environment,
            )
        started.append(Beat(process, log))
    yield started
    for beat in started:
        if beat.process.poll() is None:
            beat.process.send_signal(signal.SIGTERM)
            try:
                beat.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                beat.process.kill()
                beat.process.wait(timeout=10)


def load_app(place: dict[str, str]) -> Any:
    from celeriac import Celeriac

    app = Celeriac("reader", broker=place["TEST_BROKER_URL"], set_as_current=False)
    app.conf.update(broker_transport_options={"global_keyprefix": place["TEST_KEY_PREFIX"]})
    return app


def leader_pid(store: Any) -> int | None:
    holder = store.leader()
    return None if holder is None else int(holder.split(":")[1])


def scheduled_times(app: Any, queue: str) -> list[datetime]:
    """Every message in the queue (beat's sends), by scheduled time; taken out."""
    found: list[datetime] = []
    broker = app.create_broker(consumer_id=unique("reader"))
    try:
        while True:
            batch = broker.receive([queue], limit=500, timeout=0)
            if not batch:
                return sorted(found)
            for delivery in batch:
                found.append(datetime.fromisoformat(delivery.message.headers["beat_scheduled_at"]))
            broker.ack_many(batch)
    finally:
        broker.close()


def test_one_send_per_tick_while_leaders_are_killed(
    place: dict[str, str], beats: list[Beat], rng: random.Random
) -> None:
    from celeriac.beat.store import open_store

    app = load_app(place)
    store = open_store(app)
    pids = {beat.process.pid: beat for beat in beats}
    try:
        first = wait_for(lambda: leader_pid(store), timeout=30, what="a leader")
        started = time.monotonic()
        kills: list[tuple[float, int]] = []
        for window_start in KILL_WINDOWS:
            kill_at = started + window_start + rng.uniform(0, 3)
            wait_for(lambda: time.monotonic() >= kill_at, timeout=20)  # noqa: B023 - called at once
            victim = leader_pid(store) or first
            assert victim in pids, f"leader {victim} is not one of the beats"
            os.kill(victim, signal.SIGKILL)
            pids[victim].process.wait(timeout=10)
            kills.append((time.time(), victim))

            def new_leader() -> int | None:
                current = leader_pid(store)
                return current if current not in (None, victim) else None  # noqa: B023

            successor = wait_for(new_leader, timeout=LEASE * 3, what="a follower to take over")
            assert successor in pids
        wait_for(lambda: time.monotonic() - started >= RUN_FOR, timeout=RUN_FOR + 5)
        for beat in beats:
            if beat.process.poll() is None:
                beat.process.send_signal(signal.SIGTERM)
                beat.process.wait(timeout=10)
        times = scheduled_times(app, place["TEST_QUEUE"])
    finally:
        store.close()
        app.close()
    logs = "\n".join(beat.output() for beat in beats)
    assert "Traceback" not in logs, logs
    repeated = {moment: n for moment, n in Counter(times).items() if n > 1}
    assert not repeated, f"ticks sent more than once: {repeated}"
    assert len(times) >= RUN_FOR - 2 * MAX_GAP
    # Every tick is on the entry's phase: whole seconds after the first.
    for moment in times:
        offset = (moment - times[0]).total_seconds()
        assert abs(offset - round(offset)) < 1e-3, moment
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    missing = [(a, gap) for a, gap in zip(times, gaps, strict=False) if gap > 1.0 + 1e-3]
    # Ticks go missing only where a leader was killed: at most one gap per kill, each
    # no longer than the takeover window.
    print(f"{len(times)} ticks; gaps over 1 s: {[round(gap, 2) for _, gap in missing]}")
    assert len(missing) <= len(kills), (missing, kills)
    assert all(gap <= MAX_GAP for _, gap in missing), missing
    for killed_at, _ in kills:
        after = [t for t in times if t.timestamp() > killed_at]
        assert after, "no tick was sent after a kill"
        late = after[0].timestamp() - killed_at
        print(f"takeover: the first tick sent after the kill was scheduled {late:.2f} s after it")
    assert times[-1] >= times[0] + timedelta(seconds=RUN_FOR - MAX_GAP)
