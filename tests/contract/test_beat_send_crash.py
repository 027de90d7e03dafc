"""A beat leader killed while sending a run, on Redis and SQLite with the schedule state
in the broker's own store: the run is in the queue exactly once afterwards.

The leader is a separate process that dies (`os._exit`, a crash point) just before the
send step or just after it; a second beat then takes over, as a follower would. There
the claim, the message and the run record are one atomic step (a Lua script on Redis,
one transaction on SQLite), so neither crash can drop the run or send it twice. A run
whose message waits in Redis's delayed set takes claim, send, confirm instead; a crash
after its claim is re-sent once by the next leader (docs/periodic-tasks.md, "High
availability: the guarantee").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Any

import pytest

from celeriac._crashpoints import CRASH_EXIT_CODE
from tests.helpers import require_redis, unique, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

LEASE = 1.0
EVERY = 60.0
ENTRY = "every-minute"

CRASHING_BEAT = """
import json
import os

from celeriac import Celeriac
from celeriac.beat.scheduler import Scheduler

app = Celeriac("beatcrash", broker=os.environ["TEST_BROKER_URL"], set_as_current=False)
app.conf.update(
    task_default_queue=os.environ["TEST_QUEUE"],
    broker_transport_options={"global_keyprefix": os.environ["TEST_KEY_PREFIX"]},
    beat_schedule={
        "every-minute": {
            "task": "beatcrash.tick",
            "schedule": 60.0,
            "options": json.loads(os.environ["TEST_OPTIONS"]),
        }
    },
)
beat = Scheduler(
    app, schedule_name=os.environ["TEST_SCHEDULE"], owner="crashing", lease_seconds=1.0
)
for _ in range(20):
    beat.tick()  # the crash point ends the process at the first due run
raise SystemExit("the crash point never fired")
"""


class _Behind:
    """The system clock, `seconds` in the past (to store a last run a minute ago)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def time(self) -> float:
        return time.time() - self.seconds

    def monotonic(self) -> float:
        return time.monotonic()


@pytest.fixture(params=["redis", "sqlite"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    name = unique("beatcrash")
    env = {"TEST_QUEUE": name, "TEST_KEY_PREFIX": f"{name}:", "TEST_SCHEDULE": name}
    if request.param == "redis":
        env["TEST_BROKER_URL"] = require_redis()
    else:
        env["TEST_BROKER_URL"] = f"sqlite:///{tmp_path / 'beat.db'}"
    yield env
    if request.param == "redis":
        import redis

        client = redis.Redis.from_url(env["TEST_BROKER_URL"])
        keys = list(client.scan_iter(match=f"{name}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def make_app(place: dict[str, str], options: dict[str, Any] | None = None) -> Any:
    from celeriac import Celeriac

    app = Celeriac("beatcrash", broker=place["TEST_BROKER_URL"], set_as_current=False)
    app.conf.update(
        task_default_queue=place["TEST_QUEUE"],
        broker_transport_options={"global_keyprefix": place["TEST_KEY_PREFIX"]},
        beat_schedule={
            ENTRY: {"task": "beatcrash.tick", "schedule": EVERY, "options": options or {}}
        },
    )
    return app


def queued_ids(app: Any, queue: str) -> list[str]:
    """The task ids of every message in `queue` (taken out)."""
    found: list[str] = []
    broker = app.create_broker(consumer_id=unique("reader"))
    try:
        while True:
            batch = broker.receive([queue], limit=100, timeout=0)
            if not batch:
                return found
            found += [delivery.message.task_id for delivery in batch]
            broker.ack_many(batch)
    finally:
        broker.close()


def crash_then_take_over(
    place: dict[str, str], point: str, tmp_path: Path, options: dict[str, Any]
) -> tuple[Any, int, Any]:
    """Seed a run due now, let a leader die at `point` sending it, let a follower take
    over and catch up. Returns the app, the run's tick and the state the crash left."""
    from celeriac.beat.scheduler import Scheduler

    app = make_app(place, options)
    name = place["TEST_SCHEDULE"]
    # A beat a minute ago stored the last run: the next one is due now.
    seeding = Scheduler(app, schedule_name=name, owner="seeding", clock=_Behind(EVERY + 1))
    assert seeding.store.shares_broker
    seeding.tick()
    seeding.close()
    probe = Scheduler(app, schedule_name=name, owner="probe")
    try:
        tick = probe.store.load()[ENTRY].last_run + int(EVERY * 1_000_000)
    finally:
        probe.store.close()

    script = tmp_path / "crashing_beat.py"
    script.write_text(textwrap.dedent(CRASHING_BEAT))
    env = {**os.environ, **place, "CELERIAC_CRASH_AT": point, "TEST_OPTIONS": json.dumps(options)}
    crashed = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, timeout=120, check=False
    )
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr.decode(errors="replace")

    follower = Scheduler(app, schedule_name=name, owner="follower", lease_seconds=LEASE)
    left = follower.store.load()[ENTRY]
    try:

        def caught_up() -> bool:
            follower.tick()
            state = follower.store.load()[ENTRY]
            return (
                follower.leadership.is_leader
                and state.pending_tick is None
                and (state.last_run >= tick)
            )

        wait_for(caught_up, timeout=30, interval=0.1, what="the follower to take over")
    finally:
        follower.close()
    return app, tick, left


@pytest.mark.parametrize("point", ["before_beat_send", "after_beat_send"])
def test_a_leader_killed_while_sending_leaves_the_run_queued_once(
    place: dict[str, str], point: str, tmp_path: Path
) -> None:
    from celeriac.beat.scheduler import tick_task_id

    app, tick, left = crash_then_take_over(place, point, tmp_path, {})
    # One step: the crash left the run either not claimed at all or sent and recorded.
    assert left.pending_tick is None
    assert left.last_run == (tick if point == "after_beat_send" else tick - int(EVERY * 1_000_000))
    ids = queued_ids(app, place["TEST_QUEUE"])
    assert ids == [tick_task_id(place["TEST_SCHEDULE"], ENTRY, tick)]


def test_a_delayed_run_claimed_by_a_dead_leader_is_sent_once_by_the_next(
    place: dict[str, str], tmp_path: Path
) -> None:
    # A message that waits for its countdown takes claim, send, confirm (on Redis, in the
    # delayed set; SQLite still does it in one step): a crash after the claim is re-sent.
    app, tick, left = crash_then_take_over(place, "before_beat_send", tmp_path, {"countdown": 3600})
    broker = app.create_broker(consumer_id=unique("reader"))
    try:
        assert broker.size(place["TEST_QUEUE"]) == 1
    finally:
        broker.close()
    if place["TEST_BROKER_URL"].startswith("redis"):
        assert left.pending_tick == tick
    else:
        assert left.pending_tick is None


def queued_messages(app: Any, queue: str) -> list[Any]:
    """Every message in `queue` (taken out)."""
    found: list[Any] = []
    broker = app.create_broker(consumer_id=unique("reader"))
    try:
        while True:
            batch = broker.receive([queue], limit=100, timeout=0)
            if not batch:
                return found
            found += [delivery.message for delivery in batch]
            broker.ack_many(batch)
    finally:
        broker.close()


def test_the_one_step_send_queues_what_send_task_queues(place: dict[str, str]) -> None:
    from celeriac.beat.scheduler import Scheduler, from_us, tick_task_id

    app = make_app(place)
    name = place["TEST_SCHEDULE"]
    seeding = Scheduler(app, schedule_name=name, owner="seeding", clock=_Behind(EVERY + 1))
    seeding.tick()
    seeding.close()
    beat = Scheduler(app, schedule_name=name, owner="leader")
    try:
        tick = beat.store.load()[ENTRY].last_run + int(EVERY * 1_000_000)
        beat.tick()
        assert beat.sent == 1
    finally:
        beat.close()
    task_id = tick_task_id(name, ENTRY, tick)
    headers = {"beat_entry": ENTRY, "beat_scheduled_at": from_us(tick).isoformat()}
    app.send_task("beatcrash.tick", task_id=task_id, headers=headers)
    try:
        from_beat, from_send_task = queued_messages(app, place["TEST_QUEUE"])
    finally:
        app.close()
    assert from_beat.body == from_send_task.body
    assert from_beat.headers == from_send_task.headers
    assert from_beat.content_type == from_send_task.content_type
    assert from_beat.content_encoding == from_send_task.content_encoding
    unique_per_send = ("delivery_tag",)
    assert {k: v for k, v in from_beat.properties.items() if k not in unique_per_send} == {
        k: v for k, v in from_send_task.properties.items() if k not in unique_per_send
    }
